"""`hone kb`: create, list, show, search and remove knowledge bases (the CLI side of hone.kb)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()
err = Console(stderr=True)
kb_app = typer.Typer(no_args_is_help=True, help="Knowledge bases: your documents, indexed for retrieval.")


@kb_app.command("create")
def kb_create(
    name: str = typer.Argument(..., help="Name of the knowledge base (a new version when the documents changed)"),
    documents: List[Path] = typer.Argument(..., help="Files or folders: .txt .md .html .jsonl .pdf"),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Sentence encoder: catalogue name or a local sentence-transformers folder (default minilm-l6)"),
    chunk_tokens: Optional[int] = typer.Option(None, "--chunk-tokens", min=8, help="Tokens per chunk (default: the encoder's context)"),
    overlap: Optional[int] = typer.Option(None, "--overlap", min=0, help="Tokens a chunk shares with the one before (default: an eighth of a chunk)"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
):
    """Read, chunk, embed and index documents; an interrupted build resumes when run again."""
    from hone.kb.build import create_kb
    from hone.models.catalogue import DEFAULT_ENCODER

    result = create_kb(name, documents, encoder or DEFAULT_ENCODER, chunk_tokens, overlap, console=err)
    if as_json:
        print(json.dumps({"name": result.name, "version": result.version, "path": str(result.folder),
                          "documents": result.documents, "chunks": result.chunks, "status": result.status,
                          "seconds": round(result.seconds, 1)}))
        return
    what = {"built": "built", "resumed": "finished (resumed)", "unchanged": "unchanged: same documents and settings as"}
    out.print(f"{what[result.status]} {result.name}:{result.version}: {result.documents} documents, "
              f"{result.chunks} chunks ({result.seconds:.1f} s) -> {result.folder}", highlight=False)


@kb_app.command("list")
def kb_list(as_json: bool = typer.Option(False, "--json")):
    """Knowledge bases and their versions."""
    from hone.kb.store import list_kbs

    rows = list_kbs()
    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if k != "sources"} for r in rows]))
        return
    if not rows:
        out.print("no knowledge bases yet; create one with: hone kb create NAME DOCS...")
        return
    table = Table(header_style="bold")
    for column in ("kb", "status", "documents", "chunks", "encoder", "chunk/overlap", "created", "fingerprint"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(f"{r['name']}:{r['version']}", r["status"], str(r["documents"]), str(r["chunks"]), r["encoder"],
                      f"{r['chunk_tokens']}/{r['overlap']}", r.get("created", ""), r["fingerprint"][:12])
    out.print(table)


@kb_app.command("show")
def kb_show(ref: str = typer.Argument(..., help="NAME (newest version) or NAME:VERSION"),
            as_json: bool = typer.Option(False, "--json")):
    """One knowledge base: settings, fingerprint and its documents."""
    from hone.kb.store import find_kb, read_manifest

    manifest = read_manifest(find_kb(ref))
    if as_json:
        print(json.dumps(manifest))
        return
    out.print(f"[bold]{manifest['name']}:{manifest['version']}[/bold] {manifest['status']}: {manifest['documents']} "
              f"documents, {manifest['chunks']} chunks; encoder {manifest['encoder']}, {manifest['chunk_tokens']} "
              f"tokens per chunk, overlap {manifest['overlap']}; fingerprint {manifest['fingerprint'][:16]}",
              highlight=False)
    table = Table(header_style="bold")
    for column in ("document", "bytes", "sha256"):
        table.add_column(column)
    for s in manifest["sources"]:
        table.add_row(s["source"], f"{s['bytes']:,}", s["sha256"][:16])
    out.print(table)


@kb_app.command("search")
def kb_search(ref: str = typer.Argument(..., help="NAME or NAME:VERSION"),
              query: str = typer.Argument(..., help="What to look for"),
              k: int = typer.Option(4, "--k", min=1, help="Passages to return"),
              mode: str = typer.Option("hybrid", "--mode", help="hybrid, dense or bm25"),
              as_json: bool = typer.Option(False, "--json")):
    """The passages a model would be given for QUERY."""
    from hone.kb.store import KnowledgeBase

    passages = KnowledgeBase(ref).search(query, k, mode)
    if as_json:
        print(json.dumps([p.to_json() for p in passages], ensure_ascii=False))
        return
    for p in passages:
        out.print(f"[bold]{escape(f'[{p.id}]')}[/bold] {p.score:.4f} {escape(p.title)}", highlight=False)
        out.print(p.text[:400] + (" …" if len(p.text) > 400 else ""), markup=False, highlight=False)


@kb_app.command("rm")
def kb_rm(ref: str = typer.Argument(..., help="NAME (every version) or NAME:VERSION")):
    """Delete a knowledge base or one version of it."""
    from hone.kb.store import remove_kb

    out.print(f"removed {', '.join(remove_kb(ref))}", highlight=False)
