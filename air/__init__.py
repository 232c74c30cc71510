"""air-runtime: compile language models ahead of time with TVM, run them on small devices."""
