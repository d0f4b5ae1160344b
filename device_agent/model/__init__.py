"""The torch side's model room: backbones, adapters, memory-lean ops (Python 3.6 safe)."""
