# Breakwater's default priority policy: the reference gateway's shipped table
# (deploy/gateway/base/02-configmap.yaml, priority.rego), first match wins.
#
# Input: {"severity": "critical" | "warning" | "info",
#         "environment": "production" | "staging" | ... | "unknown",
#         "namespace": "<the CR's namespace>",
#         "labels": {<the alert's labels>}}
# Output: data.kubernaut.gateway.priority.priority, one of P0..P3. A policy may
# also define remediation_path (aggressive, moderate, conservative or manual);
# without it Breakwater uses the reference table.
package kubernaut.gateway.priority

import rego.v1

priority := "P0" if {
	input.severity == "critical"
	input.environment == "production"
} else := "P0" if {
	input.severity == "critical"
	input.labels.team == "platform-engineering"
} else := "P1" if {
	input.severity == "critical"
	input.environment == "staging"
} else := "P1" if {
	input.severity == "warning"
	input.environment == "production"
} else := "P3" if {
	input.severity == "info"
} else := "P3" if {
	input.severity == ""
} else := "P2"
