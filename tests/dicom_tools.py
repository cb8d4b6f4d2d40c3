"""Checks of DICOM files with tools no one here wrote: dicom3tools ``dciodvfy``, DCMTK ``dsrdump`` and
PixelMed's ``DicomSRValidator``.

All are Debian packages the project installs (scripts/install_system_deps.sh). A missing tool is
an error, not a skip: the acceptance criteria are stated in terms of these tools.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (run scripts/install_system_deps.sh)")
    return path


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for ``path`` (IOD, module and attribute checks); [] when valid.

    Warnings (for example our private ``99ONCOSTREAM`` coding scheme) are not errors.
    """
    result = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if result.returncode not in (0, 1) and not errors:  # crashed without saying why
        errors.append(f"dciodvfy exited {result.returncode}")
    return errors


def dsrdump_text(path: str | Path) -> str:
    """dsrdump's rendering of an SR (raises CalledProcessError when it cannot read the document)."""
    result = subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout + result.stderr


def dsrdump_ok(path: str | Path) -> bool:
    """True when dsrdump renders the whole document tree without an error (``E:``) message."""
    try:
        text = dsrdump_text(path)
    except subprocess.CalledProcessError:
        return False
    return "<CONTAINER:" in text and not any(line.startswith("E:") for line in text.splitlines())


_PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# Java 17's XPath limits stop PixelMed's XSLT validator part way (DESIGN.md, pitfalls)
_XPATH_UNLIMITED = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]


def sr_validator_available() -> bool:
    """PixelMed's DicomSRValidator (Debian ``pixelmed-apps``) checks SR templates row by row."""
    return _PIXELMED_JAR.is_file() and shutil.which("java") is not None


def sr_validator_errors(path: str | Path) -> list[str]:
    """Template and relationship errors PixelMed's DicomSRValidator reports for an SR; warnings are left out."""
    result = subprocess.run(
        [_tool("java"), *_XPATH_UNLIMITED, "-cp", str(_PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator",
         str(path)], capture_output=True, text=True, timeout=300)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error") or "illegal relationship" in line]
    if "Root Template Validation Complete" not in result.stdout and not errors:
        errors.append(f"DicomSRValidator did not complete (exit {result.returncode})")
    return errors
