"""A fake LLM for the ``openai`` synthesize backend: ``ChatServer`` speaks the chat-completions
protocol over real HTTP (http.server in a thread) and answers like a model would, in the document's
language; plus the real Wikipedia documents it answers about and the helpers tests check replies with."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from tasks.ingest import InputFile, ingest_file
from tasks.synthesize.llm.config import BudgetConfig, OpenAIConfig, SelectionConfig
from tests.support.paths import SHARED_DATA

WIKICLEAN = SHARED_DATA / "wikiclean-pages"
KEY = "sk-m3test-NEVER-WRITE-ME-5e0c2f7a91b4d38e"  # distinctive: grep for it everywhere

# Questions the fake LLM writes, per language ({t} = the article title). Real questions a model
# could ask, paraphrasing rather than copying; three per passage.
QUESTIONS = {
    "en": [
        "What is known about the origins of {t}?",
        "How is {t} described in terms of its main features?",
        "Why is {t} considered significant?",
    ],
    "de": [
        "Was ist über die Herkunft von {t} bekannt?",
        "Wodurch zeichnet sich {t} im Wesentlichen aus?",
        "Warum gilt {t} als bedeutend?",
    ],
    "es": [
        "¿Qué se sabe sobre el origen de {t}?",
        "¿Cómo se describen las características principales de {t}?",
        "¿Por qué se considera importante {t}?",
    ],
    "fr": [
        "Que sait-on des origines de {t} ?",
        "Comment décrit-on les caractéristiques principales de {t} ?",
        "Pourquoi {t} est-il considéré comme important ?",
    ],
    "ru": [
        "Что известно о происхождении темы «{t}»?",
        "Какими главными чертами описывается тема «{t}»?",
        "Почему тема «{t}» считается важной?",
    ],
    "uk": [
        "Що відомо про походження теми «{t}»?",
        "Якими головними рисами описується тема «{t}»?",
        "Чому тема «{t}» вважається важливою?",
    ],
    "zh": ["关于{t}的起源，人们知道些什么？", "{t}的主要特点是如何描述的？", "为什么{t}被认为很重要？"],
    "it": [
        "Che cosa si sa delle origini di {t}?",
        "Come vengono descritte le caratteristiche principali di {t}?",
        "Perché {t} è considerata importante?",
    ],
    "nl": [
        "Wat is er bekend over de oorsprong van {t}?",
        "Hoe worden de belangrijkste kenmerken van {t} beschreven?",
        "Waarom wordt {t} als belangrijk beschouwd?",
    ],
    "el": [
        "Τι είναι γνωστό για την προέλευση του θέματος «{t}»;",
        "Πώς περιγράφονται τα κύρια χαρακτηριστικά του θέματος «{t}»;",
        "Γιατί το θέμα «{t}» θεωρείται σημαντικό;",
    ],
}
LANGS = sorted(QUESTIONS)


def wiki_corpus() -> pd.DataFrame:
    records = []
    for path in sorted(WIKICLEAN.glob("*.xml")):
        records.extend(ingest_file(InputFile(path, "mediawiki", "wikipedia", None)).records)
    return pd.DataFrame(records)


# -- the server ---------------------------------------------------------------------------------
def completion(body: dict, content: object) -> dict:
    """A well-formed chat-completion reply to request ``body`` with message ``content``; faults
    that break its shape start from this (``("json", broken)``)."""
    prompt = sum(len(m["content"]) for m in body["messages"])
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    usage = {"prompt_tokens": prompt // 4, "completion_tokens": len(str(content)) // 4}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    reply = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0}
    reply.update(model=body["model"], choices=[choice], usage=usage)
    return reply


class ChatServer:
    """A chat-completions server in a thread. ``respond(body, n_seen)`` returns an action:
    ``("ok", questions)``, ``("content", raw_text)``, ``("status", code, headers, body)``,
    ``("sleep", seconds)``, ``("bad_body",)``, ``("drop",)``, ``("hang",)``, or a 200 reply of
    any shape: ``("json", obj)``, ``("raw", bytes)`` or ``("raw_unsized", bytes)`` (without a
    Content-Length); ``n_seen`` counts earlier requests with the same messages."""

    def __init__(self, respond: Callable[[dict, int], tuple]):
        self.respond = respond
        self.requests: list[dict] = []  # {"hash", "t", "auth", "action"}
        self.lock = threading.RLock()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                h = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
                with server.lock:
                    n_seen = sum(r["hash"] == h for r in server.requests)
                    action = server.respond(body, n_seen)
                    server.requests.append(
                        {"hash": h, "t": time.monotonic(), "auth": self.headers.get("Authorization"),
                         "action": action[0], "body": body}
                    )  # fmt: skip
                kind = action[0]
                if kind == "hang":
                    server.release.wait(30)
                    self._status(503, {}, {"error": {"message": "released"}})
                elif kind == "sleep":
                    time.sleep(action[1])
                    self._status(500, {}, {"error": {"message": "too late"}})
                elif kind == "status":
                    self._status(action[1], action[2], action[3])
                elif kind == "bad_body":
                    self._raw(200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"ind')
                elif kind == "drop":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "4000")
                    self.end_headers()
                    self.wfile.write(b'{"id": "chatcmpl-x", "choices": [')
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif kind == "json":
                    self._raw(200, json.dumps(action[1], ensure_ascii=False).encode())
                elif kind == "raw":
                    self._raw(200, action[1])
                elif kind == "raw_unsized":  # no Content-Length: the body ends when the connection does
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    self._write(action[1])
                else:
                    content = (
                        json.dumps({"questions": action[1]}, ensure_ascii=False)
                        if kind == "ok"
                        else action[1]
                    )
                    self._raw(200, json.dumps(completion(body, content), ensure_ascii=False).encode())

            def _write(self, data):
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: fine
                    self.close_connection = True

            def _status(self, code, headers, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _raw(self, code, data):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, action: str | None = None) -> int:
        with self.lock:
            return sum(action is None or r["action"] == action for r in self.requests)


def user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def doc_of(body: dict, corpus: pd.DataFrame) -> pd.Series:
    """The corpus document whose title the prompt names (prompts quote the title)."""
    text = user_text(body)
    hits = [row for row in corpus.itertuples() if row.title and row.title in text.split("\n", 1)[0]]
    assert hits, "prompt names no corpus title"
    return max(hits, key=lambda r: len(r.title))


def good_questions(doc) -> list[str]:
    return [q.format(t=doc.title) for q in QUESTIONS[doc.lang]]


def config(server: ChatServer, **over) -> OpenAIConfig:
    base = {
        "base_url": server.base_url,
        "model": "test-model",
        "api_key_env": "M3_TEST_LLM_KEY",
        "questions_per_passage": 3,
        "timeout_s": 5.0,  # a loaded CI machine can take over a second to answer; timeout tests set their own
        "max_retries": 2,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        "concurrency": 4,
        "selection": SelectionConfig(languages=LANGS, min_doc_chars=2000, passage_chars=1200),
        "budget": BudgetConfig(price_input_per_mtok=0.15, price_output_per_mtok=0.6),
    }
    base.update(over)
    return OpenAIConfig(**base)


def assert_key_nowhere(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
