#!/usr/bin/env bash
# Debian packages the tests need: dicom3tools (dciodvfy), DCMTK, PixelMed (DicomSRValidator), Orthanc
# (+ DICOMweb plugin), Prometheus, openssl (the tests' throwaway CA and certificates), PostgreSQL, Chromium.
# Idempotent and quiet; skipped when every tool is already present.
set -euo pipefail
need=()
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v dsrdump >/dev/null || need+=(dcmtk)
[ -e /usr/share/java/pixelmed.jar ] || need+=(pixelmed-apps)
command -v Orthanc >/dev/null || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v prometheus >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
# PostgreSQL (results store; the tests and `make stack` run their own throwaway cluster), headless Chromium and
# its driver (the worklist page test; selenium is told Debian's chromedriver path, so nothing is downloaded)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
# policy-rc.d keeps the packages' own services from starting; tests start their own instances
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
