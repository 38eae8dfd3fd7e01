#!/usr/bin/env bash
# Make a real headless browser available to the web UI's end-to-end test (Debian/Ubuntu):
# Debian's `chromium` and `chromium-driver` (ChromeDriver of the same version), driven by
# Selenium from the dev extra. Idempotent; run from .ci/run before pytest. Without root or
# apt the test skips with a message naming this script. No browser is downloaded at test
# time (Selenium Manager is never used: the test passes the driver's path).
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "ci_chromium: $(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version | head -n 1)"
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    echo "ci_chromium: installed $(chromium --version 2>/dev/null | head -n 1)"
else
    echo "ci_chromium: chromium/chromedriver missing and cannot apt-get install them" \
         "(need root + apt); the browser test will skip" >&2
fi
