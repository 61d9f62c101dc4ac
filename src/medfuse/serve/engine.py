"""The model behind the service: diagnose a case, explain it, answer chat completions.

One `MedFuse` is loaded per process and used under a lock: the web server answers
requests from a thread pool, while a CPU model gains nothing from running two generations
at once (they would share the same cores) and its modules are not meant for concurrent
calls. Loading is lazy unless `preload` is asked, so a server that only records feedback
starts in a second.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfuse.errors import MedfuseError
from medfuse.model.faithfulness import split_sentences
from medfuse.record.case import PatientCase

if TYPE_CHECKING:
    from medfuse.model import MedFuse
    from medfuse.model.diagnosis import Diagnosed

log = logging.getLogger("medfuse.serve")


class ChatRequestError(MedfuseError):
    """A chat-completions request the model cannot answer as sent (HTTP 400)."""


@dataclass
class CaseAnalysis:
    """Everything the service stores about a diagnosed case."""

    diagnosed: Diagnosed
    evidence: list[dict[str, Any]]  # the checked items (units, flags), each with its prompt id `cite` ([Ek]) or None
    sentences: list[str]  # the checked reasoning, sentence by sentence (what a clinician reviews)
    prompt_text: str  # the chat-formatted prompt the language model continued
    explanation: dict[str, Any] | None
    explanation_html: str | None
    explanation_note: str | None  # why there is no explanation, when there is none


def reviewable_sentences(check_text: str) -> list[str]:
    """The reasoning sentences a clinician can accept, reject or edit."""
    return split_sentences(check_text)


class ModelEngine:
    """A lazily loaded checkpoint, used by one request at a time."""

    def __init__(self, checkpoint: Path | None = None, model: MedFuse | None = None, max_new_tokens: int = 128,
                 max_chat_tokens: int = 512, explain: bool = True):
        if checkpoint is None and model is None:
            raise ValueError("give a checkpoint folder or a loaded model")
        self.checkpoint = checkpoint
        self._model = model
        self.max_new_tokens = max_new_tokens
        self.max_chat_tokens = max_chat_tokens
        self.explain = explain
        self._lock = threading.Lock()

    @property
    def model(self) -> MedFuse:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from medfuse.model import MedFuse
                    from medfuse.model.locate import quiet_transformers

                    quiet_transformers()
                    self._model = MedFuse.load(self.checkpoint)
        return self._model

    @property
    def model_name(self) -> str:
        """The id `/v1/models` lists (read from the checkpoint card without loading weights)."""
        if self._model is not None:
            return self._model.name
        import json

        try:
            card = json.loads((Path(self.checkpoint) / "metadata.json").read_text(encoding="utf-8"))
            return str(card.get("name", "medfuse"))
        except (OSError, ValueError, AttributeError):
            return "medfuse"

    # ------------------------------------------------------------------ diagnosis

    def analyse(self, case: PatientCase, lang: str = "en", explain: bool | None = None) -> CaseAnalysis:
        """Diagnose `case`, and explain it when asked and `medfuse.explain` is available."""
        from medfuse.interpret.case import interpret_case
        from medfuse.model.diagnosis import diagnose_many
        from medfuse.model.llm import chat_prompt
        from medfuse.model.prompt import numbered_evidence

        model = self.model
        with self._lock:
            interpreted = interpret_case(case)
            (d,) = diagnose_many(model, [case], lang=lang, max_new_tokens=self.max_new_tokens, evidence=[interpreted])
            # The reasoning cites evidence as [Ek], numbered over the prompt's list.
            cite_ids = {id(ev): k for k, ev in enumerate(numbered_evidence(interpreted), 1)}
            evidence = [{**ev.model_dump(mode="json"), "cite": cite_ids.get(id(ev))} for ev in d.evidence]
            system, user = d.prompt  # the exact prompt, for the preference pairs exported later
            prompt_text = chat_prompt(model.lm.tokenizer, user, system)
            explanation, fragment, note = (None, None, "explanations were not requested")
            if self.explain if explain is None else explain:
                explanation, fragment, note = self._explain(model, case)
        return CaseAnalysis(diagnosed=d, evidence=evidence, sentences=reviewable_sentences(d.check.text),
                            prompt_text=prompt_text, explanation=explanation, explanation_html=fragment,
                            explanation_note=note)

    @staticmethod
    def _explain(model: MedFuse, case: PatientCase) -> tuple[dict | None, str | None, str | None]:
        """(explanation JSON, its HTML fragment, why one is missing) from `medfuse.explain`."""
        from medfuse.explain import explain_case, explanation_html_fragment

        try:
            explanation = explain_case(model, case)
        except MedfuseError as e:
            return None, None, f"no explanation: {e}"
        except Exception as e:  # noqa: BLE001 - the diagnosis stands without its explanation
            log.warning("explanation failed (%s)", e.__class__.__name__)
            return None, None, f"no explanation: the explainer failed ({e.__class__.__name__})"
        try:
            return explanation.model_dump(mode="json"), explanation_html_fragment(explanation, case), None
        except Exception as e:  # noqa: BLE001 - the JSON explanation stands without its rendering
            log.warning("explanation rendering failed (%s)", e.__class__.__name__)
            return explanation.model_dump(mode="json"), None, "the explanation could not be rendered"

    # ------------------------------------------------------------------ chat completions

    def complete(self, messages: list[dict[str, Any]], max_tokens: int | None) -> tuple[str, int, int]:
        """Answer an OpenAI-style message list: (text, prompt tokens, completion tokens).

        System messages become the system prompt; the other messages are joined in order
        (a one-turn chat is the user's message itself). Images come as `data:` URLs, the
        first one is read as a radiograph and injected at a `<cxr>` placeholder, as the
        eval kit's `medfuse:` adapter does. Remote image URLs are refused (no network).
        """
        from medfuse.formats import has_cjk
        from medfuse.model.llm import chat_prompt

        system, user, images = _flatten_messages(messages)
        budget = self.max_chat_tokens if max_tokens is None else max_tokens
        if not 1 <= budget <= self.max_chat_tokens:
            raise ChatRequestError(f"max_tokens must be between 1 and {self.max_chat_tokens}")
        model = self.model
        with self._lock:
            fused = None
            if images:
                cxr = _read_data_image(images[0])
                fused = model.fuse([PatientCase(case_id="chat", cxr=[cxr])])
                if "cxr" in fused.token_groups[0]:
                    user = f"{'图像' if has_cjk(user) else 'Image'}: <cxr>\n\n{user}"
            (text,) = model.generate([(system, user)], fused, max_new_tokens=budget)
            tokenizer = model.lm.tokenizer
            n_prompt = len(tokenizer(chat_prompt(tokenizer, user, system or None))["input_ids"])
            n_completion = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return text, n_prompt, n_completion


def _text_of(content: Any, images: list[str]) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise ChatRequestError("message content parts must be objects")
            if part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise ChatRequestError("image_url needs a url")
                images.append(url)
            else:
                raise ChatRequestError(f"unsupported content part type {part.get('type')!r}")
        return "\n".join(parts)
    if content is None:
        return ""
    raise ChatRequestError("message content must be a string or a list of parts")


def _flatten_messages(messages: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
    if not messages:
        raise ChatRequestError("messages must not be empty")
    images: list[str] = []
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for m in messages:
        role = m.get("role")
        if role not in ("system", "user", "assistant", "developer"):
            raise ChatRequestError(f"unsupported message role {role!r}")
        text = _text_of(m.get("content"), images)
        (system if role in ("system", "developer") else turns).append(text if role in ("system", "developer")
                                                                      else (role, text))
    if not turns or turns[-1][0] != "user":
        raise ChatRequestError("the last message must come from the user")
    user = turns[0][1] if len(turns) == 1 else "\n\n".join(f"{role}: {text}" for role, text in turns)
    return "\n\n".join(system), user, images


def _read_data_image(url: str):
    from medfuse.io.image import read_image

    if not url.startswith("data:"):
        raise ChatRequestError("only data: image URLs are accepted (the server makes no network requests)")
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ChatRequestError("image data URLs must be base64")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ChatRequestError("image data URL is not valid base64") from None
    import tempfile

    suffix = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg"}.get(header[5:].split(";")[0])
    if suffix is None:
        raise ChatRequestError("images must be PNG or JPEG")
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name)
        except MedfuseError:
            raise ChatRequestError("the image could not be read") from None
