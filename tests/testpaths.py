"""Where the tests' files are, for tests in any subdirectory."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
GOLDEN = TESTS / "golden"
CLIENT_SCRIPT = str(TESTS / "client.py")
