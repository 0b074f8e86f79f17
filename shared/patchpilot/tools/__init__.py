"""Developer tools run from the repository root (`make docs`); not used by the runtimes."""
