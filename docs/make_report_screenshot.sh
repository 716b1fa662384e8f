#!/usr/bin/env bash
# Render the gate's HTML report to docs/report_screenshot.png (the picture in README).
# Needs a headless HTML renderer: wkhtmltoimage (WebKit) here; with Chromium installed use instead
#   chromium --headless --screenshot=docs/report_screenshot.png --window-size=1200,1800 "file://$PWD/$REPORT"
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT="${1:-cxr-robust-report/report.html}"
wkhtmltoimage --quiet --width 1200 --height 1800 "$REPORT" docs/report_screenshot.png
python - <<'PY'
from PIL import Image
img = Image.open("docs/report_screenshot.png").convert("RGB")
img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save("docs/report_screenshot.png", optimize=True)
PY
