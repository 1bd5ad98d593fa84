"""What `jlservice run` executes: the supervisor loop and everything it drives at run time."""
