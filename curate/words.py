"""How the command line, the summary and the report write a count: "1 clip", "2 clips"."""


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
