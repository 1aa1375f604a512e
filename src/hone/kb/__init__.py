"""Knowledge bases: documents chunked, embedded and indexed for retrieval; and training data made from them.

    documents.py  read text, Markdown, HTML, JSONL, PDF into sections
    chunking.py   sections -> overlapping chunks sized to the encoder
    embed.py      the sentence encoder (MiniLM by default), transformers only
    build.py      `hone kb create`: build, version, resume
    store.py      find, list, remove; KnowledgeBase.search (dense, BM25, hybrid)
    prompt.py     the template that puts passages before a question; citations
    synth.py      `hone data synth`: question-answer pairs grounded in chunks, filtered
"""
from hone.kb.build import BuildResult, create_kb
from hone.kb.prompt import TEMPLATE, retrieve_for, with_passages
from hone.kb.store import KnowledgeBase, KnowledgeBaseError, Passage, find_kb, list_kbs, remove_kb

__all__ = ["TEMPLATE", "BuildResult", "KnowledgeBase", "KnowledgeBaseError", "Passage", "create_kb", "find_kb",
           "list_kbs", "remove_kb", "retrieve_for", "with_passages"]
