"""api-fns.ru (ЕГРЮЛ/ЕГРИП lookups by INN): the `egr` method, its documented answers and errors."""
