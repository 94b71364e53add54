"""Day-ahead load forecasting: pure model code (features, LightGBM, seasonal naive, backtest metrics).

No Ray, no I/O: series in, forecasts and metrics out. The CLI backtest, the Ray training task and the
Serve app all call this same code.
"""
