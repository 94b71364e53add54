"""The users service (Контроль пользователей): registration, login, tokens, the caller's own profile."""
