#!/usr/bin/env bash
# Routing tests of monitoring/alertmanager.yml: each label set must reach exactly these
# receivers, in this order. Needs amtool (Debian package prometheus-alertmanager).
#   monitoring/alertmanager-routes.test.sh
set -euo pipefail
cd "$(dirname "$0")"

command -v amtool >/dev/null || { echo "amtool not found (apt-get install prometheus-alertmanager)" >&2; exit 2; }

failures=0

# expect RECEIVERS LABEL=VALUE...
expect() {
  local receivers=$1
  shift
  # amtool prints a warning that --config.file overrides --alertmanager.url; keep only real errors.
  if amtool config routes test --config.file=alertmanager.yml --verify.receivers="$receivers" "$@" \
      2> >(grep -v -- '--config.file flag overrides' >&2) >/dev/null; then
    echo "ok    $* -> $receivers"
  else
    echo "FAIL  $* -> expected $receivers, got $(amtool config routes test --config.file=alertmanager.yml "$@" 2>/dev/null)"
    failures=$((failures + 1))
  fi
}

# Urgent critical alerts (the service cannot serve): SMS, PagerDuty, Slack and email.
expect sms,pagerduty,slack-alerts,ops-email alertname=InstanceDown severity=critical urgent=true job=nexus-ai-api instance=api-1:8000
expect sms,pagerduty,slack-alerts,ops-email alertname=DatabaseConnectionFailure severity=critical urgent=true job=nexus-ai-api instance=api-1:8000 backend=sqlite
expect sms,pagerduty,slack-alerts,ops-email alertname=ErrorBudgetBurn severity=critical urgent=true burn=fast job=nexus-ai-api
# Other critical alerts: PagerDuty, Slack and email, no SMS (no build worker up: the API serves).
expect pagerduty,slack-alerts,ops-email alertname=HighErrorRate severity=critical job=nexus-ai-api instance=api-1:8000
expect pagerduty,slack-alerts,ops-email alertname=HighMemoryUsage severity=critical job=nexus-ai-api instance=api-1:8000
expect pagerduty,slack-alerts,ops-email alertname=BuildWorkerDown severity=critical job=nexus-ai-worker instance=worker-1:8001
# Warnings: Slack and email; `urgent` does not make a warning page anyone.
expect slack-alerts,ops-email alertname=HighMemoryUsage severity=warning job=nexus-ai-api instance=api-1:8000
expect slack-alerts,ops-email alertname=ErrorBudgetBurn severity=warning burn=slow job=nexus-ai-api
expect slack-alerts,ops-email alertname=BuildsStuck severity=warning urgent=true job=nexus-ai-api instance=api-1:8000
expect slack-alerts,ops-email alertname=BuildWorkerDown severity=warning job=nexus-ai-worker instance=worker-1:8001
# The build workers' database is as urgent as the API's.
expect sms,pagerduty,slack-alerts,ops-email alertname=DatabaseConnectionFailure severity=critical urgent=true job=nexus-ai-worker instance=worker-1:8001 backend=dynamodb
# Anything else falls back to email.
expect ops-email alertname=Watchdog severity=none
expect ops-email alertname=SomethingWithoutSeverity

if [ "$failures" -ne 0 ]; then
  echo "$failures routing case(s) failed" >&2
  exit 1
fi
echo "all routing cases passed"
