"""Session-wide test set-up: keep all state inside the repo or a tmp dir, offline."""

from components.settings import configure_environment

configure_environment()
