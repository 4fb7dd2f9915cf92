"""The only code that talks to the Hub: the start-up access check and the upload of a plan.

The token is whatever ``huggingface_hub`` finds (``HF_TOKEN``, else the one ``hf auth login`` stored); it
is passed to no function here, printed nowhere and written to no file.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from deita.hub.plan import RepoUpload

log = logging.getLogger(__name__)


class HubError(RuntimeError):
    """A push that failed after the stages finished (the artifacts stay in the run directory)."""


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids network calls (as ``huggingface_hub`` reads it)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES


def one_line(err: BaseException) -> str:
    """An exception as one line of text (its type when it has no message)."""
    return " ".join(str(err).split()) or type(err).__name__


def call_with_timeout(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()``, or TimeoutError after ``seconds`` (a hung connection cannot hold the start-up check)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="hub-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def whoami() -> dict:
    """The token's account on the Hub (name, orgs, token role)."""
    from huggingface_hub import HfApi

    return HfApi().whoami()


def validate_license(license: str) -> None:
    """Ask the Hub whether ``license`` is a license id it accepts in card metadata (ValueError if not)."""
    from huggingface_hub import ModelCard, ModelCardData

    from deita.hub.cards import card_text

    ModelCard(card_text(ModelCardData(license=license, library_name="transformers"), "license check")).validate("model")


def check_access(prefix: str, *, timeout: float, license: str | None = None) -> str:
    """Check that a push to ``prefix`` can work, and return the account name; raise ConfigError otherwise.

    In order: network allowed (``HF_HUB_OFFLINE`` not on), a token present, the Hub reachable within
    ``timeout`` seconds and accepting the token, a token that may write, a namespace the account may
    write to, and (when set) a license id the Hub accepts.
    """
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from deita.validate import ConfigError

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"config key 'hub.push': {reason} (or add hub.dry_run=true to stage the push without it)")

    if offline_mode():
        raise fail(f"pushing needs the network, but HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']} (the Makefile and "
                   "tests set it); set HF_HUB_OFFLINE=0")
    if not get_token():
        raise fail("pushing needs a Hugging Face token; export HF_TOKEN=<a write token> or run `hf auth login`")
    try:
        account = call_with_timeout(whoami, timeout)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise fail(f"{constants.ENDPOINT} refused the token (HTTP {status}); set HF_TOKEN to a valid write token") from None
    except Exception as err:
        raise fail(f"cannot reach {constants.ENDPOINT} ({one_line(err)}); pushing needs the network") from None
    role = (account.get("auth") or {}).get("accessToken", {}).get("role")
    if role == "read":
        raise fail(f"the token of {account.get('name')} is read-only; use a token with write access")
    namespace = prefix.split("/")[0]
    allowed = [account.get("name")] + [org.get("name") for org in account.get("orgs") or []]
    if namespace not in allowed:
        raise fail(f"{account.get('name')} cannot create repos under {namespace!r} "
                   f"(hub.repo_prefix={prefix}); namespaces of this token: {', '.join(map(str, allowed))}")
    if license:
        try:
            call_with_timeout(lambda: validate_license(license), timeout)
        except ValueError as err:
            raise ConfigError(f"config key 'hub.license': the Hub rejects {license!r}: {one_line(err)}") from None
    return str(account.get("name"))


def upload(plan: list[RepoUpload]) -> list[str]:
    """Create each repo of ``plan`` (when missing) and push its files in one commit; return the commit URLs.

    Every card is validated by the Hub first, so bad metadata fails before anything is created.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, RepoCard

    api = HfApi()
    for repo in plan:
        RepoCard.load(repo.files["README.md"], repo_type=repo.repo_type).validate(repo.repo_type)
    urls = []
    for repo in plan:
        api.create_repo(repo.repo_id, repo_type=repo.repo_type, private=repo.private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=local) for path, local in repo.files.items()]
        commit = api.create_commit(repo.repo_id, operations, repo_type=repo.repo_type,
                                   commit_message=repo.commit_message)
        log.info("hub: pushed %s %s (%d files): %s", repo.repo_type, repo.repo_id, len(repo.files), commit.commit_url)
        urls.append(str(commit.commit_url))
    return urls
