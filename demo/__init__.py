"""The demo network on loopback (README's first command)."""
