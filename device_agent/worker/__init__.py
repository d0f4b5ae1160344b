"""The torch worker process: the only room that joins protocol, model and training."""
