"""Import STPyV8 so that V8 is handed a valid ICU data file.

STPyV8 initialises V8 when it is imported (`JSPlatform.init`), naming the ICU data file it
found: `$HOME/.local/share/stpyv8/icudtl.dat` if that exists, else the fixed
`/usr/share/stpyv8/icudtl.dat`. For the first, `CPlatform::GetICUDataFile` (13.1.201.22)
returns the `c_str()` of a `std::string` freed on return, so V8 opens whatever the freed heap
bytes spell (usually a 6-byte name that does not exist): ICU runs without data, every `Intl`
API throws "Icu error", `Intl.DateTimeFormat` (and `toLocaleString` of a Date, moment's
`tz.guess()`) aborts the worker with SIGTRAP, `Intl.Segmenter` with SIGSEGV; and when the
bytes happen to name a directory ("/" or "."), `JSPlatform.init` raises MemoryError (V8
sizes the file with ftell and allocates that). STPyV8 writes that home copy itself on its
first import (`icu_sync`, as `make install` does), so every developer machine has it.

So STPyV8 is imported with HOME naming a directory that holds only STPyV8's version file
(its `icu_sync` then writes nothing and the fixed path, or none, is passed intact), and with
ICU_DATA naming the wheel's data under the name ICU looks for there when V8 was given no
file (no /usr/share copy). HOME is restored afterwards.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)
_PACKAGE_NAME = re.compile(rb"icudt\d+[lb]")


def _wheel_data() -> Path | None:
    """Return the ICU data file shipped in the STPyV8 wheel (`stpyv8-icu/icudtl.dat`)."""
    for file in importlib.metadata.files("stpyv8") or ():
        if file.name == "icudtl.dat":
            return Path(str(file.locate()))
    return None


def _fill(work: Path, version: str) -> None:
    marker = work / "home" / ".local" / "share" / "stpyv8"
    marker.mkdir(parents=True)
    (marker / "stpyv8-version.txt").write_text(version, encoding="utf-8")
    (work / "icu").mkdir()
    data = _wheel_data()
    if data is not None and data.is_file():
        with data.open("rb") as fh:
            name = _PACKAGE_NAME.search(fh.read(1 << 16))  # in its table of contents
        if name is not None:
            shutil.copyfile(data, work / "icu" / f"{name.group().decode()}.dat")


def _prepared(version: str) -> tuple[Path, bool]:
    """Return a directory holding `home/` and `icu/`, made once per user and STPyV8 version,
    and whether it is this process's own (no writable cache), to remove once imported."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eventfn"
    base = cache / f"stpyv8-{version}"
    if (base / "home").is_dir():
        return base, False
    try:
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=cache, prefix=".stpyv8-"))
    except OSError:  # no writable cache: this process's own copy
        work = Path(tempfile.mkdtemp(prefix="eventfn-stpyv8-"))
        _fill(work, version)
        return work, True
    try:
        _fill(work, version)
        work.rename(base)  # atomic: a worker starting meanwhile sees all of it or nothing
    except OSError:  # another process made it first
        shutil.rmtree(work, ignore_errors=True)
    return base, False


def import_stpyv8() -> ModuleType:
    """Import (and so initialise) STPyV8 with a valid ICU data file; return the module."""
    version = importlib.metadata.version("stpyv8")
    base, own = _prepared(version)
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(base / "home")
    os.environ.setdefault("ICU_DATA", str(base / "icu"))
    try:
        import STPyV8
    finally:
        if saved is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = saved
        if own:  # ICU has mapped its data by now: the file may go
            shutil.rmtree(base, ignore_errors=True)
    if STPyV8.__version__ != version:  # icu_sync compared the version file with this one
        log.warning("STPyV8 %s is not its package's %s", STPyV8.__version__, version)
    return STPyV8


__all__ = ["import_stpyv8"]
