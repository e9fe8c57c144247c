"""The vault: master password, envelope key, encrypted per-model chat history.

The UI and the CLI use only the names exported here. The vault knows nothing of models
beyond an id string.
"""

from appliance.vault.errors import (
    HistoryError,
    HistoryTampered,
    KdfParamsRefused,
    OrphanedHistory,
    SettingsCorrupt,
    Throttled,
    UnknownConversation,
    VaultAlreadyInitialized,
    VaultError,
    VaultLocked,
    VaultNotInitialized,
    WeakPassword,
    WrongPassword,
)
from appliance.vault.history import ConversationInfo, ConversationLog, HistoryStore, Message
from appliance.vault.seed import lazy_legacy_resolver, match_legacy_names
from appliance.vault.strength import RULE as PASSWORD_RULE
from appliance.vault.strength import check_new_password, password_strength
from appliance.vault.vault import Unlocked, Vault

__all__ = [
    "PASSWORD_RULE",
    "ConversationInfo",
    "ConversationLog",
    "HistoryError",
    "HistoryStore",
    "HistoryTampered",
    "KdfParamsRefused",
    "Message",
    "OrphanedHistory",
    "SettingsCorrupt",
    "Throttled",
    "UnknownConversation",
    "Unlocked",
    "Vault",
    "VaultAlreadyInitialized",
    "VaultError",
    "VaultLocked",
    "VaultNotInitialized",
    "WeakPassword",
    "WrongPassword",
    "check_new_password",
    "lazy_legacy_resolver",
    "match_legacy_names",
    "password_strength",
]
