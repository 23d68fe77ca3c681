"""Conversations kept on this machine, in SQLite (stdlib sqlite3) in the user's data
directory: list, open, rename, delete, export to Markdown. Each conversation keeps its
own system prompt, temperature, max tokens and model."""

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversation (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    temperature REAL,
    max_tokens INTEGER,
    model TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversation(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    figures TEXT NOT NULL DEFAULT ''
);
"""


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    model: str | None = None


@dataclass
class Message:
    role: str
    content: str
    figures: str = ""


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def conversations(self) -> list[Conversation]:
        rows = self.db.execute(
            "SELECT id, title, system_prompt, temperature, max_tokens, model "
            "FROM conversation ORDER BY updated_at DESC, id DESC"
        )
        return [Conversation(*row) for row in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        row = self.db.execute(
            "SELECT id, title, system_prompt, temperature, max_tokens, model "
            "FROM conversation WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        return Conversation(*row) if row else None

    def unused(self) -> Conversation | None:
        """A conversation nothing was said in yet, so "new chat" does not pile them up."""
        row = self.db.execute(
            "SELECT id FROM conversation WHERE NOT EXISTS "
            "(SELECT 1 FROM message WHERE conversation_id = conversation.id) "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return self.get(row[0]) if row else None

    def create(self, title: str = "New chat") -> Conversation:
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO conversation (title, updated_at) VALUES (?, ?)", (title, time.time())
            )
        assert cursor.lastrowid is not None
        return Conversation(id=cursor.lastrowid, title=title)

    def update(self, conversation: Conversation) -> None:
        with self.db:
            self.db.execute(
                "UPDATE conversation SET title = ?, system_prompt = ?, temperature = ?, "
                "max_tokens = ?, model = ?, updated_at = ? WHERE id = ?",
                (
                    conversation.title,
                    conversation.system_prompt,
                    conversation.temperature,
                    conversation.max_tokens,
                    conversation.model,
                    time.time(),
                    conversation.id,
                ),
            )

    def delete(self, conversation_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM conversation WHERE id = ?", (conversation_id,))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.execute(
            "SELECT role, content, figures FROM message WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [Message(*row) for row in rows]

    def add_message(self, conversation_id: int, message: Message) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO message (conversation_id, role, content, figures) VALUES (?, ?, ?, ?)",
                (conversation_id, message.role, message.content, message.figures),
            )
            self.db.execute(
                "UPDATE conversation SET updated_at = ? WHERE id = ?",
                (time.time(), conversation_id),
            )

    def drop_last_reply(self, conversation_id: int) -> int:
        """Delete what answered the last prompt (before sending it again); how many."""
        with self.db:
            cursor = self.db.execute(
                "DELETE FROM message WHERE conversation_id = ? AND role = 'assistant' AND id > "
                "(SELECT COALESCE(MAX(id), 0) FROM message WHERE conversation_id = ? "
                "AND role = 'user')",
                (conversation_id, conversation_id),
            )
        return cursor.rowcount

    def export_markdown(self, conversation_id: int, directory: Path) -> Path:
        conversation = self.get(conversation_id)
        if conversation is None:
            raise KeyError(conversation_id)
        lines = [f"# {conversation.title}", ""]
        if conversation.system_prompt:
            lines += ["> System: " + conversation.system_prompt.replace("\n", "\n> "), ""]
        for message in self.messages(conversation_id):
            lines += [f"## {message.role.capitalize()}", "", message.content, ""]
            if message.figures:
                lines += [f"*{message.figures}*", ""]
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in conversation.title)
        path = directory / f"{conversation.id}-{safe.strip('-')[:40] or 'chat'}.md"
        path.write_text("\n".join(lines))
        return path
