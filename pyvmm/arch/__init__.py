"""Architecture-specific boot setup."""
