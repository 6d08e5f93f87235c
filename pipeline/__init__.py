"""The Faust application, its agents, web views and the command line."""
