-- Model usage (issue 10): what each invocation and build spent, and the agents' sums.
-- Rows written before this migration keep their data and read the defaults: no tokens, no
-- model, no time to first token, and a build usage of NULL.

ALTER TABLE invocations ADD COLUMN model TEXT;
ALTER TABLE invocations ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN tokens_estimated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocations ADD COLUMN time_to_first_token_ms REAL;
ALTER TABLE invocations ADD COLUMN finish_reason TEXT;

ALTER TABLE agents ADD COLUMN cancelled_invocations INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN total_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN total_output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN ttft_ms_total REAL NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN ttft_count INTEGER NOT NULL DEFAULT 0;

-- JSON: {calls, input_tokens, output_tokens, tokens_estimated, duration_ms}.
ALTER TABLE builds ADD COLUMN usage TEXT;
