-- The forecasting model registry (analytics issue, item 2): every training run is a version with its
-- training window, the backtest that chose between the global LightGBM model and the weekly seasonal
-- naive forecast, and the model itself (LightGBM's text format, point and quantile boosters).
CREATE SCHEMA IF NOT EXISTS forecasting;

CREATE TABLE forecasting.models (
    version bigserial PRIMARY KEY,
    trained_at timestamptz NOT NULL DEFAULT now(),
    train_start date NOT NULL,                -- first local day of the training data
    train_end date NOT NULL,                  -- first local day after it (exclusive)
    holdout_days integer NOT NULL CHECK (holdout_days > 0),  -- the backtest: the last days of the window
    devices integer NOT NULL CHECK (devices >= 0),
    training_rows bigint NOT NULL CHECK (training_rows >= 0),
    -- lightgbm: the model beat the weekly seasonal naive forecast on the backtest; otherwise that naive
    -- forecast is served (with intervals from its own backtest errors).
    chosen text NOT NULL CHECK (chosen IN ('lightgbm', 'seasonal_naive_weekly')),
    metrics jsonb NOT NULL,                   -- {"model": {mase, mape, mae}, "seasonal_naive_daily": ..., ...}
    interval_quantiles double precision[] NOT NULL,
    naive_error_ratios double precision[] NOT NULL,  -- weekly naive's relative error at those quantiles
    model jsonb,                              -- NULL when no model could be fitted (too little data)
    training_seconds double precision NOT NULL,
    CHECK (train_start < train_end)
);
CREATE INDEX forecast_models_latest ON forecasting.models (trained_at DESC, version DESC);
