"""The bundled sample data: ten real camera-trap photos and their MegaDetector v5a detections.

Located through this package, so the paths hold in a source checkout and in an installed wheel alike.
Licences and attribution: `SAMPLES_DIR / "README.md"`.
"""

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "camera-traps"
SAMPLE_DETECTIONS = SAMPLES_DIR / "md_v5a_detections.json"
