"""What validation reports: one Problem per finding, errors and warnings alike."""
from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    where: str = ""  # e.g. 'job "x" > group "g" > task "t" > resources.memory'; "" for syntax errors
    line: int | None = None
    column: int | None = None
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def to_dict(self) -> dict[str, object]:
        return {"message": self.message, "line": self.line, "column": self.column, "where": self.where}

    def format(self, path: str) -> str:
        """One line for humans: `PATH:LINE:COL: error: MSG` when there is a position, else `PATH: error: WHERE: MSG`."""
        pos = f"{path}:{self.line}:{self.column}" if self.line is not None else path
        if self.line is not None and self.column is None:
            pos = f"{path}:{self.line}"
        where = f"{self.where}: " if self.where else ""
        return f"{pos}: {self.severity}: {where}{self.message}"
