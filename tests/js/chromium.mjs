// Headless Chromium (Debian's, or $CHROMIUM) for the browser tests, launched one way.
import { chromium } from "playwright-core";

// --ignore-certificate-errors on top of the contexts' ignoreHTTPSErrors: without it Chromium
// still aborts a few TLS handshakes (alert CertificateUnknown, then a retry), which only
// litters the gateway's log.
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
      "--ignore-certificate-errors"],
  });
}
