"""The engine: runs workflows durably. Owns transactions; talks to the world only via ports."""
