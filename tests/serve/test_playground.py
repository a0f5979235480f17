"""The playground page in a real headless browser (Debian's chromium driven by Playwright): type a
prompt, press Generate, see the tokens arrive — the same text the library generates — and the
prefix-state cache hit on the second run."""
import os

import pytest

from mambakit.generation import generate_text
from tests.serve.conftest import Served, tiny_byte_mamba

CHROMIUM = os.environ.get("MAMBAKIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no chromium at {CHROMIUM} (`apt-get install -y chromium`; .ci/run does)")


def test_type_a_prompt_and_watch_tokens_arrive():
    from playwright.sync_api import expect, sync_playwright

    served = Served(tiny_byte_mamba(), api_key=None, prefill_chunk=8)
    prompt = "def parse(text):\n    "
    want = generate_text(served.model, served.tokenizer, prompt, max_new_tokens=40)[0]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=30_000)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(served.url + "/")
                expect(page.locator("#model")).to_have_text("tiny")
                expect(page.locator("#state-bytes")).to_contain_text(str(served.engine.state_bytes))
                page.fill("#prompt", prompt)
                page.fill("#max-tokens", "40")
                page.fill("#temperature", "0")
                page.click("#generate")
                expect(page.locator("#status")).to_have_text("done")
                assert page.locator("#completion").text_content() == want
                expect(page.locator("#tokens")).to_have_text("40")
                expect(page.locator("#cache-hit")).to_have_text("cache miss")
                page.click("#generate")                      # the same prompt: its state is cached
                expect(page.locator("#status")).to_have_text("done")
                expect(page.locator("#cache-hit")).to_contain_text("prefilled only 1 tokens")
                assert page.locator("#completion").text_content() == want
            finally:
                browser.close()
    finally:
        served.close()
