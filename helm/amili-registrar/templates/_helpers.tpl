{{/*
The chart's name, truncated to 63 characters (a label value's limit).
*/}}
{{- define "amili-registrar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the resources' names.
*/}}
{{- define "amili-registrar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "amili-registrar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The standard labels, on every resource.
*/}}
{{- define "amili-registrar.labels" -}}
helm.sh/chart: {{ include "amili-registrar.chart" . }}
{{ include "amili-registrar.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: consumer
{{- end }}

{{/*
The labels that select the pods (immutable in a Deployment: never add to them).
*/}}
{{- define "amili-registrar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "amili-registrar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "amili-registrar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "amili-registrar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret the secret variables come from: the existing one, or the chart-managed one.
*/}}
{{- define "amili-registrar.secretName" -}}
{{- default (include "amili-registrar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "amili-registrar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The secret variables (the service's SecretStr settings, and the SASL username), each taken from the
Secret, never from the ConfigMap. All optional, so that an existing Secret needs only the keys it
uses, except LEDGER_URL when the ledger's URL is in the Secret (see ledgerSource).
*/}}
{{- define "amili-registrar.secretKeys" -}}
AMILI_API_KEY: amiliApiKey
AMILI_PRIVATE_KEY: amiliPrivateKey
LEDGER_URL: ledgerUrl
KAFKA_SASL_USERNAME: kafkaSaslUsername
KAFKA_SASL_PASSWORD: kafkaSaslPassword
{{- end }}

{{/*
The variables the ConfigMap gets from a value of the chart (config.extraEnv may not repeat them).
*/}}
{{- define "amili-registrar.chartEnv" -}}
KAFKA_BOOTSTRAP_SERVERS: kafka.bootstrapServers
INVOICE_CREATED_TOPIC: kafka.topics.invoiceCreated
REGISTRATION_RESULT_TOPIC: kafka.topics.registrationResult
DEAD_LETTER_TOPIC: kafka.topics.deadLetter
CONSUMER_GROUP_ID: kafka.consumerGroupId
KAFKA_SECURITY_PROTOCOL: kafka.securityProtocol
KAFKA_SASL_MECHANISM: kafka.saslMechanism
AMILI_BASE_URL: amili.baseUrl
AMILI_DEFAULT_ACCOUNT: amili.defaultAccount
AMILI_DEFAULT_CREDITOR: amili.defaultCreditor
AMILI_API_CODE: amili.apiCode
LOG_LEVEL: config.logLevel
SHUTDOWN_GRACE_SECONDS: config.shutdownGraceSeconds
MAX_IN_FLIGHT: config.maxInFlight
HTTP_PORT: config.httpPort
{{- end }}

{{/*
Settings whose names hold PASSWORD, SECRET, TOKEN or KEY but are no secret: config.extraEnv may set
them (AMILI_PRIVATE_KEY_FILE is a path).
*/}}
{{- define "amili-registrar.nonSecretEnv" -}}
{{- list "AMILI_PRIVATE_KEY_FILE" | toJson }}
{{- end }}

{{/*
Where LEDGER_URL comes from:
- secret: the chart-managed Secret (secrets.ledgerUrl, which wins over ledger.url);
- existingSecret: the existing Secret's LEDGER_URL key (ledger.url "" with secrets.existingSecret);
- values: ledger.url, in the ConfigMap (never with a password). With secrets.existingSecret, a
  LEDGER_URL key there still wins over it, as it always has.
*/}}
{{- define "amili-registrar.ledgerSource" -}}
{{- if .Values.secrets.existingSecret }}
{{- if .Values.ledger.url }}values{{ else }}existingSecret{{ end }}
{{- else if .Values.secrets.ledgerUrl }}secret
{{- else }}values
{{- end }}
{{- end }}

{{/*
The ledger's URL as far as the chart knows it (empty when it is in an existing Secret).
*/}}
{{- define "amili-registrar.ledgerUrl" -}}
{{- $source := include "amili-registrar.ledgerSource" . }}
{{- if eq $source "secret" }}{{ .Values.secrets.ledgerUrl }}
{{- else if eq $source "values" }}{{ .Values.ledger.url }}
{{- end }}
{{- end }}

{{/*
"true" when the ledger is SQLite: a file on the pod's /data volume, for one replica only.
*/}}
{{- define "amili-registrar.sqliteLedger" -}}
{{- if hasPrefix "sqlite:" (include "amili-registrar.ledgerUrl" .) }}true{{ end }}
{{- end }}

{{/*
The labels of the `helm test` pod: not the pods' selector labels, so that neither the Service, the
PodDisruptionBudget nor the spreading counts it.
*/}}
{{- define "amili-registrar.testLabels" -}}
helm.sh/chart: {{ include "amili-registrar.chart" . }}
app.kubernetes.io/name: {{ printf "%s-test" (include "amili-registrar.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: test
{{- end }}

{{/*
KEDA's name for the SASL mechanism.
*/}}
{{- define "amili-registrar.kedaSasl" -}}
{{- $m := .Values.kafka.saslMechanism }}
{{- if eq $m "PLAIN" }}plaintext
{{- else if eq $m "SCRAM-SHA-256" }}scram_sha256
{{- else if eq $m "SCRAM-SHA-512" }}scram_sha512
{{- else }}none
{{- end }}
{{- end }}

{{- define "amili-registrar.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "amili-registrar.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/*
Checks across values that the schema cannot express; included by the Deployment, so a bad
combination fails the render.
*/}}
{{- define "amili-registrar.validate" -}}
{{- $grace := .Values.config.shutdownGraceSeconds | float64 }}
{{- if le (.Values.terminationGracePeriodSeconds | float64) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than config.shutdownGraceSeconds (%v)" .Values.terminationGracePeriodSeconds .Values.config.shutdownGraceSeconds) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) (int .Values.kafka.partitions) }}
{{- fail (printf "autoscaling.maxReplicas (%v) is larger than kafka.partitions (%v): the extra consumers would sit idle" .Values.autoscaling.maxReplicas .Values.kafka.partitions) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) is larger than autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- include "amili-registrar.validateLedger" . }}
{{- include "amili-registrar.validateExtraEnv" . }}
{{- if and (include "amili-registrar.kafkaSasl" .) (not .Values.kafka.saslMechanism) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.saslMechanism" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}

{{/*
The ledger: no password in the ConfigMap, and SQLite (a file per pod) for one replica only.
*/}}
{{- define "amili-registrar.validateLedger" -}}
{{- $url := .Values.ledger.url }}
{{- if or (regexMatch "^[^:]+://[^/?#]*:[^/?#]*@" $url) (regexMatch "(?i)[?&]password=" $url) }}
{{- fail "ledger.url holds a password, which would land in the ConfigMap: put the URL in a Secret instead, as secrets.ledgerUrl or as the key LEDGER_URL of secrets.existingSecret with ledger.url \"\"" }}
{{- end }}
{{- with .Values.secrets.ledgerUrl }}
{{- if not (regexMatch "^(sqlite:///[^?]+|postgres(ql)?://[^\\s]+)$" .) }}
{{- fail "secrets.ledgerUrl is neither sqlite:///path nor postgresql://user:password@host:5432/database (postgres:// too): the service refuses any other scheme, postgresql+asyncpg:// included" }}
{{- end }}
{{- end }}
{{- if and (not $url) (not .Values.secrets.existingSecret) (not .Values.secrets.ledgerUrl) }}
{{- fail "ledger.url is empty (the URL in a Secret) but neither secrets.ledgerUrl nor secrets.existingSecret is set" }}
{{- end }}
{{- if include "amili-registrar.sqliteLedger" . }}
{{- $where := printf "ledger.url %s" $url }}
{{- if eq (include "amili-registrar.ledgerSource" .) "secret" }}
{{- $where = "secrets.ledgerUrl sqlite:..." }}
{{- end }}
{{- $replicas := "" }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) 1 }}
{{- $replicas = printf "autoscaling.maxReplicas %v" .Values.autoscaling.maxReplicas }}
{{- end }}
{{- else if gt (int .Values.replicaCount) 1 }}
{{- $replicas = printf "replicaCount %v" .Values.replicaCount }}
{{- end }}
{{- if $replicas }}
{{- fail (printf "%s with the SQLite ledger (%s): each pod would keep its own ledger, whose claims do not stop the other pods, so an invoice could be registered twice. Use PostgreSQL for several replicas: ledger.url postgresql://host:5432/database (no password), or the URL with its password in secrets.ledgerUrl or in the key LEDGER_URL of secrets.existingSecret (with ledger.url \"\")" $replicas $where) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
config.extraEnv goes into the ConfigMap: no secret, and nothing a value of the chart sets already.
*/}}
{{- define "amili-registrar.validateExtraEnv" -}}
{{- $secretKeys := include "amili-registrar.secretKeys" . | fromYaml }}
{{- $chartEnv := include "amili-registrar.chartEnv" . | fromYaml }}
{{- $nonSecret := include "amili-registrar.nonSecretEnv" . | fromJsonArray }}
{{- range $name, $_ := .Values.config.extraEnv }}
{{- if hasKey $secretKeys $name }}
{{- fail (printf "config.extraEnv.%s: secrets never go in the ConfigMap; set secrets.%s, or the key %s of secrets.existingSecret" $name (get $secretKeys $name) $name) }}
{{- else if and (regexMatch "PASSWORD|SECRET|TOKEN|KEY" $name) (not (has $name $nonSecret)) }}
{{- fail (printf "config.extraEnv.%s looks like a secret (its name holds PASSWORD, SECRET, TOKEN or KEY) and secrets never go in the ConfigMap; the service's secrets are AMILI_API_KEY, AMILI_PRIVATE_KEY, LEDGER_URL and KAFKA_SASL_PASSWORD, set through secrets.* or secrets.existingSecret" $name) }}
{{- else if hasKey $chartEnv $name }}
{{- fail (printf "config.extraEnv.%s is set by the chart from %s: set that instead" $name (get $chartEnv $name)) }}
{{- end }}
{{- end }}
{{- end }}
