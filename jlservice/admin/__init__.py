"""Tools a person runs: install and unit files, nginx and TLS configuration, the doctor."""
