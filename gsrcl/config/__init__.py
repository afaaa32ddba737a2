"""Settings: typed, validated experiment settings, the paper's presets, config files."""
