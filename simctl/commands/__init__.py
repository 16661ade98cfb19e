"""One module per simctl command or command group; simctl.app imports each only when needed."""
