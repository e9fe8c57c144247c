"""Who says a message: the roles of a chat request and the roles the history stores.

A chat request (the engine, the chat page) carries user and assistant turns; its system
prompt travels apart. The history also keeps system and tool messages, such as those of
an imported conversation, which are stored and exported but never sent as turns.
"""

CHAT_ROLES = ("user", "assistant")
HISTORY_ROLES = ("system", *CHAT_ROLES, "tool")
