"""Running an experiment: the plan and job bodies, the results folder, the device pool, Ray,
progress and the summary."""
