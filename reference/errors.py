"""One error type for bad input: its message is one line naming the violated constraint."""


class MoecheckError(ValueError):
    """Raised for invalid input to moecheck (references, cases, CLI). The message is the whole story."""


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise MoecheckError(msg)
