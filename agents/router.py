"""The question router: which action a question gets (retrieve, decompose or specialist), and why.

This is the router's public face: the types others code against (`Action`, `RouteDecision`,
`Router`), the three policies (`RulesRouter`, `ClassifierRouter`, `LLMRouter`, implemented in
`ragtune.agents.routing`), the factory `load_router`, the shipped default classifier artifact
(`DEFAULT_ARTIFACT`), and the command line ``python -m ragtune.agents.router`` (`main`), which
trains a classifier artifact or routes questions from the shell.

Sub-questions of a decomposition are routed with ``allowed=SUB_QUESTION_ACTIONS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.agents.routing.classifier import ClassifierRouter
from ragtune.agents.routing.decision import (
    ACTIONS,
    POLICIES,
    SUB_QUESTION_ACTIONS,
    Action,
    RouteDecision,
    Router,
    check_allowed,
)
from ragtune.agents.routing.llm import (
    ROUTER_REPAIR_PROMPT,
    ROUTER_SYSTEM_PROMPT,
    ROUTER_USER_PROMPT,
    LLMRouter,
    parse_route_reply,
)
from ragtune.agents.routing.rules import DEFAULT_RULES, Rule, RulesRouter
from ragtune.errors import ConfigError, RagtuneError

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "ACTIONS", "DEFAULT_ARTIFACT", "DEFAULT_RULES", "POLICIES", "ROUTER_REPAIR_PROMPT",
    "ROUTER_SYSTEM_PROMPT", "ROUTER_USER_PROMPT", "SUB_QUESTION_ACTIONS", "Action",
    "ClassifierRouter", "LLMRouter", "RouteDecision", "Router", "Rule", "RulesRouter",
    "build_parser", "load_router", "main", "parse_route_reply",
]

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "router-classifier"
"""The classifier artifact shipped with ragtune (all-MiniLM-L6-v2, trained on outcome labels;
its manifest says which actions it knows)."""

DEFAULT_DATA_DIR = Path(os.environ.get("RAGTUNE_DATA_DIR") or "../shared/data")
"""Where the training command looks for the shared QA data unless told otherwise
(``$RAGTUNE_DATA_DIR``, else ``../shared/data`` from the repository root)."""


def load_router(
    policy: str,
    *,
    embeddings: Embeddings | None = None,
    chat_model: BaseChatModel | None = None,
    artifact: Path | None = None,
) -> Router:
    """Return a router for `policy`.

    Args:
        policy: One of `POLICIES`.
        embeddings: The embedding model of the classifier policy; the default one
            (`ragtune.tools.embeddings.load_embeddings()`) when None.
        chat_model: The chat model of the llm policy (required for it).
        artifact: The classifier artifact directory; the shipped `DEFAULT_ARTIFACT` when None.

    Raises:
        ConfigError: If the policy is unknown, the llm policy has no chat model, or the artifact
            is missing, corrupt or was trained on other embeddings.
    """
    if policy == "rules":
        return RulesRouter()
    if policy == "llm":
        if chat_model is None:
            raise ConfigError("the llm routing policy needs a chat model (chat_model=...)")
        return LLMRouter(chat_model)
    if policy == "classifier":
        if embeddings is None:
            from ragtune.tools.embeddings import load_embeddings

            embeddings = load_embeddings()
        return ClassifierRouter.load(artifact or DEFAULT_ARTIFACT, embeddings)
    raise ConfigError(f"unknown routing policy {policy!r}; choose one of {', '.join(POLICIES)}")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m ragtune.agents.router``."""
    parser = argparse.ArgumentParser(
        prog="python -m ragtune.agents.router",
        description="Train the router's classifier, or route questions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train, evaluate and save a classifier artifact")
    train.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                       help="shared QA data folder (default: %(default)s)")
    train.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT,
                       help="artifact directory to write (default: the shipped artifact)")
    train.add_argument("--labels", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                       help="`ragtune bench qa --strategies no-retrieval rag` output folders "
                            "on tune splits: train on outcome labels (the cheapest strategy that "
                            "answered correctly) instead of multi-hop structure")
    train.add_argument("--compare", type=Path, default=None, metavar="ARTIFACT",
                       help="an earlier artifact to score on the same held-out questions")
    train.add_argument("--specialist", type=Path, action="append", default=[], metavar="FILE.jsonl",
                       help='specialist questions, {"question"} or {"prompt"} per line '
                            "(repeatable); adds the specialist class")
    train.add_argument("--seed", type=int, default=0, help="split and search seed (default: 0)")
    train.add_argument("--held-out", type=float, default=0.2,
                       help="fraction held out for the reported accuracy (default: 0.2)")
    train.add_argument("--c", type=float, default=None,
                       help="inverse regularisation strength, scikit-learn's C (default: chosen "
                            "by cross-validated accuracy)")
    train.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                       help="weight classes to balance them (default: none)")
    train.add_argument("--min-class-examples", type=int, default=20, metavar="N",
                       help="outcome labels: a route labelled on fewer questions is trained as "
                            "the next costlier one (default: %(default)s)")
    train.add_argument("--no-lexical", dest="lexical", action="store_false",
                       help="use the embedding alone, without the lexical features")
    train.add_argument("--no-test-report", dest="test_report", action="store_false",
                       help="skip the report-only score on the test files")
    train.set_defaults(handler=_train_command)

    route = commands.add_parser("route", help="route questions and print the decisions as JSON")
    route.add_argument("questions", nargs="+", metavar="QUESTION")
    route.add_argument("--policy", choices=POLICIES, default="classifier")
    route.add_argument("--artifact", type=Path, default=None, help="classifier artifact directory")
    route.add_argument("--chat-model", default=None, metavar="SPEC",
                       help="chat model of the llm policy, as 'provider:model'")
    route.add_argument("--allowed", default=",".join(ACTIONS),
                       help="comma-separated actions to choose from (default: %(default)s)")
    route.set_defaults(handler=_route_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the router command line and return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.handler(args)
    except RagtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return code


def _train_command(args: argparse.Namespace) -> int:
    from ragtune.agents.routing.training import TrainingArguments, train_classifier_artifact

    settings = TrainingArguments(
        data_dir=args.data_dir, out=args.out, label_runs=args.labels, specialist=args.specialist,
        seed=args.seed, held_out=args.held_out, c=args.c,
        class_weight=None if args.class_weight == "none" else args.class_weight,
        lexical=args.lexical, test_report=args.test_report, compare=args.compare,
        min_class_examples=args.min_class_examples,
    )
    train_classifier_artifact(settings, report=print)
    return 0


def _route_command(args: argparse.Namespace) -> int:
    chat_model = None
    if args.policy == "llm":
        if not args.chat_model:
            raise ConfigError("--policy llm needs --chat-model SPEC")
        from ragtune.agents.models import load_chat_model

        chat_model = load_chat_model(args.chat_model)
    router = load_router(args.policy, chat_model=chat_model, artifact=args.artifact)
    allowed = [a.strip() for a in args.allowed.split(",") if a.strip()]
    for question in args.questions:
        decision = router.route(question, allowed=check_allowed(allowed))
        print(json.dumps({"question": question, **decision.to_dict()}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
