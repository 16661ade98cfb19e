"""simctl: the operators' command line."""
