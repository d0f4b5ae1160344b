"""The versioned wire between the API process and the torch worker (stdlib only; both
interpreters import it). framing.py moves bytes; messages.py says what they mean."""
