#!/usr/bin/env bash
# Render the gate's HTML report to docs/report_screenshot.png (the picture in README).
# Needs a headless browser: Debian's chromium (apt-get install -y chromium), else wkhtmltoimage.
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT="${1:-cxr-robust-report/report.html}"
if command -v chromium >/dev/null; then
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,1800 \
    --screenshot="$PWD/docs/report_screenshot.png" "file://$(realpath "$REPORT")" 2>/dev/null
else
  wkhtmltoimage --quiet --width 1200 --height 1800 "$REPORT" docs/report_screenshot.png
fi
python - <<'PY'
from PIL import Image
img = Image.open("docs/report_screenshot.png").convert("RGB")
img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save("docs/report_screenshot.png", optimize=True)
PY
