"""Running an experiment: the plan and job bodies (jobs), the results folder (run_folder) and
which encoders it keeps (retention), the estimate of a run (calibrate, estimate), placing jobs by
what they need (schedule) on worker processes (dispatch) or Ray (ray_pool), progress and the
summary; pipeline ties them together."""
