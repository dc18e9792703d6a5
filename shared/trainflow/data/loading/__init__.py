"""How training reads a cache: loading modes, transforms, collation, the DataLoader factory and its monitor."""
