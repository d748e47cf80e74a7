"""clearlift: keeps advertising and revenue data in sync, run by cron."""

__version__ = "0.1.0"
