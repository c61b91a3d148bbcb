"""The one exception type of the Linux guest assets."""


class AssetError(Exception):
    """Fetching or building a guest asset failed; str() is one line for the
    user naming the step that failed and, for a command, its last error line."""
