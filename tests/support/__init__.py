"""What the tests share: the checkout's paths and the test photos; helper modules beside this one.

Tests import these as ``tests.support.<module>`` (tests/ is a package; the repository root is on
sys.path through pyproject's ``[tool.pytest.ini_options] pythonpath``)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
SAMPLES = ROOT / "data" / "samples"


def photo_paths() -> list[Path]:
    """Real photos for tests: ../shared/data/photos when present, else the shipped samples."""
    src = PHOTOS if PHOTOS.is_dir() else SAMPLES
    return sorted(src.glob("*.jpg"))
