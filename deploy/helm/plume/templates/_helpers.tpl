{{/*
Names and labels.
*/}}
{{- define "plume.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "plume.fullname" -}}
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

{{/* The router's resource names: <fullname>-router, within 63 characters. */}}
{{- define "plume.routerName" -}}
{{- printf "%s-router" (include "plume.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "plume.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "plume.selectorLabels" -}}
app.kubernetes.io/name: {{ include "plume.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "plume.labels" -}}
helm.sh/chart: {{ include "plume.chart" . }}
{{ include "plume.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: plume
plume.io/pipeline: {{ regexReplaceAll "[-_]+$" (include "plume.pipelineName" .) "" | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The component of the StatefulSet: "all" (stage all) or "capture" (stage
split or capture). The router's component is "router".
*/}}
{{- define "plume.statefulComponent" -}}
{{- if eq .Values.stage "all" }}all{{ else }}capture{{ end }}
{{- end }}

{{- define "plume.hasStatefulSet" -}}
{{- if has .Values.stage (list "all" "split" "capture") }}true{{ end }}
{{- end }}

{{- define "plume.hasRouter" -}}
{{- if has .Values.stage (list "split" "route") }}true{{ end }}
{{- end }}

{{- define "plume.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "plume.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "plume.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "plume.stateDirRoot" -}}/var/lib/plume{{- end }}

{{/*
plume.pipelineInput: values.pipeline as a mapping (a YAML string is parsed),
serialised as YAML; the input of plume.pipeline.
*/}}
{{- define "plume.pipelineInput" -}}
{{- $p := .Values.pipeline }}
{{- if kindIs "string" $p }}
{{- $parsed := fromYaml $p }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "values.pipeline: not a valid YAML mapping: %v" (get $parsed "Error")) }}
{{- end }}
{{- $p = $parsed }}
{{- end }}
{{- if not (kindIs "map" $p) }}
{{- fail "values.pipeline must be a mapping (the pipeline file) or a YAML string" }}
{{- end }}
{{- toYaml $p }}
{{- end }}

{{- define "plume.pipelineName" -}}
{{- $p := include "plume.pipelineInput" . | fromYaml }}
{{- $name := get $p "name" | default "" | toString }}
{{- if not (regexMatch "^[a-z0-9][a-z0-9_-]{0,62}$" $name) }}
{{- fail (printf "values.pipeline.name %q: required, 1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit (docs/config.md)" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* Whether the pipeline uses the embedded broker: no kafka.brokers. */}}
{{- define "plume.embedded" -}}
{{- $p := include "plume.pipelineInput" . | fromYaml }}
{{- $kafka := get $p "kafka" | default dict }}
{{- if not (kindIs "map" $kafka) }}{{ $kafka = dict }}{{ end }}
{{- if not (get $kafka "brokers") }}true{{ end }}
{{- end }}

{{/*
plume.listen checks a listen address the chart owns and returns the one to
use. Arguments: list (the pipeline's block or nil) key port.
*/}}
{{- define "plume.listen" -}}
{{- $block := index . 0 }}
{{- $key := index . 1 }}
{{- $port := index . 2 | int }}
{{- $want := printf "0.0.0.0:%d" $port }}
{{- $given := "" }}
{{- if kindIs "map" $block }}{{ $given = get $block "listen" | default "" | toString }}{{ end }}
{{- if and $given (not (has $given (list $want (printf ":%d" $port) (printf "[::]:%d" $port)))) }}
{{- fail (printf "values.pipeline.%s.listen is %q: inside the pod it must listen on all interfaces at the chart's port; remove it (the chart sets %q) or change values.%s.port" $key $given $want $key) }}
{{- end }}
{{- default $want $given }}
{{- end }}

{{/*
plume.pipeline: the pipeline file as deployed: values.pipeline with
state_dir, admin.listen and metrics.listen set by the chart.
*/}}
{{- define "plume.pipeline" -}}
{{- $p := include "plume.pipelineInput" . | fromYaml }}
{{- $name := include "plume.pipelineName" . }}
{{- $stateDir := printf "%s/%s" (include "plume.stateDirRoot" .) $name }}
{{- $given := get $p "state_dir" | default "" | toString | trimSuffix "/" }}
{{- if and $given (ne $given $stateDir) }}
{{- fail (printf "values.pipeline.state_dir is %q: in this chart it must be %q (the persistent volume is mounted at %s); remove it and the chart sets it" $given $stateDir (include "plume.stateDirRoot" .)) }}
{{- end }}
{{- $_ := set $p "state_dir" $stateDir }}
{{- if .Values.admin.enabled }}
{{- $admin := get $p "admin" | default dict }}
{{- $_ := set $admin "listen" (include "plume.listen" (list $admin "admin" .Values.admin.port)) }}
{{- $_ := set $p "admin" $admin }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- $metrics := get $p "metrics" | default dict }}
{{- $_ := set $metrics "listen" (include "plume.listen" (list $metrics "metrics" .Values.metrics.port)) }}
{{- $_ := set $p "metrics" $metrics }}
{{- end }}
{{- toYaml $p }}
{{- end }}

{{/*
plume.validate fails rendering on combinations that cannot work.
*/}}
{{- define "plume.validate" -}}
{{- $pipeline := include "plume.pipeline" . }}
{{- $embedded := include "plume.embedded" . }}
{{- $stage := .Values.stage }}
{{- if and $embedded (gt (int .Values.router.replicas) 1) }}
{{- fail (printf "router.replicas=%d needs an external Kafka cluster: the pipeline has no kafka.brokers, so it uses the embedded broker, which only works with a single all-in-one replica (stage: all, replicas: 1). Router replicas scale as Kafka consumers of an external cluster: set pipeline.kafka.brokers, or set router.replicas to 1." (int .Values.router.replicas)) }}
{{- end }}
{{- if and $embedded (ne $stage "all") }}
{{- fail (printf "stage=%s needs an external Kafka cluster: the pipeline has no kafka.brokers, so it uses the embedded broker, which lives inside the single all-in-one pod. Use stage: all, or set pipeline.kafka.brokers." $stage) }}
{{- end }}
{{- if and (not .Values.admin.enabled) (or .Values.probes.liveness.enabled .Values.probes.readiness.enabled .Values.probes.startup.enabled) }}
{{- fail "probes need the admin server: set admin.enabled=true, or disable probes.liveness, probes.readiness and probes.startup" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true" }}
{{- end }}
{{- if and .Values.admin.enabled .Values.metrics.enabled (eq (int .Values.admin.port) (int .Values.metrics.port)) }}
{{- fail (printf "admin.port and metrics.port are both %d; they must differ" (int .Values.admin.port)) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set either minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if .Values.checkEnvReferences }}
{{- $open := gt (len .Values.envFrom) 0 }}
{{- $provided := list }}
{{- range $k, $_ := .Values.secrets }}{{ $provided = append $provided $k }}{{ end }}
{{- range .Values.env }}{{ $provided = append $provided .name }}{{ end }}
{{- range .Values.existingSecrets }}
{{- if .keys }}
{{- range $k, $_ := .keys }}{{ $provided = append $provided $k }}{{ end }}
{{- else }}
{{- $open = true }}
{{- end }}
{{- end }}
{{- if not $open }}
{{- $missing := list }}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" ($pipeline | replace "$$" "") -1 }}
{{- $var := . | trimPrefix "${" | trimSuffix "}" }}
{{- if not (has $var $provided) }}{{ $missing = append $missing $var }}{{ end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "the pipeline references ${%s} but no secrets, existingSecrets keys or env entry provides it (Plume refuses to start on an unset ${VAR}; write ${VAR:-default} for an optional one, or set checkEnvReferences=false if an envFrom source provides it)" (join "}, ${" ($missing | uniq))) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
plume.pod renders a pod template. Arguments: dict root component stage
resources stateVolume (a volume source for "state", or nil when the
StatefulSet's claim template provides it).
*/}}
{{- define "plume.pod" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
metadata:
  labels:
    {{- include "plume.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/pipeline: {{ include "plume.pipeline" $root | sha256sum }}
    checksum/secrets: {{ toJson $v.secrets | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "plume.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: plume
      image: {{ include "plume.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        - run
        - -c
        - /etc/plume/pipeline.yaml
        - --stage
        - {{ .stage }}
        {{- range $v.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- if or $v.admin.enabled $v.metrics.enabled }}
      ports:
        {{- if $v.metrics.enabled }}
        - name: metrics
          containerPort: {{ $v.metrics.port }}
          protocol: TCP
        {{- end }}
        {{- if $v.admin.enabled }}
        - name: admin
          containerPort: {{ $v.admin.port }}
          protocol: TCP
        {{- end }}
      {{- end }}
      {{- $secretEnv := list }}
      {{- range $v.existingSecrets }}
      {{- $s := . }}
      {{- range $envName, $key := .keys }}
      {{- $secretEnv = append $secretEnv (dict "name" $envName "valueFrom" (dict "secretKeyRef" (dict "name" $s.name "key" $key "optional" (default false $s.optional)))) }}
      {{- end }}
      {{- end }}
      {{- if or $secretEnv $v.env }}
      env:
        {{- with $secretEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- $envFrom := list }}
      {{- if $v.secrets }}
      {{- $envFrom = append $envFrom (dict "secretRef" (dict "name" (printf "%s-env" (include "plume.fullname" $root)))) }}
      {{- end }}
      {{- range $v.existingSecrets }}
      {{- if not .keys }}
      {{- $envFrom = append $envFrom (dict "secretRef" (dict "name" .name "optional" (default false .optional))) }}
      {{- end }}
      {{- end }}
      {{- if or $envFrom $v.envFrom }}
      envFrom:
        {{- with $envFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.envFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- range $probe, $kind := dict "liveness" "livenessProbe" "readiness" "readinessProbe" "startup" "startupProbe" }}
      {{- $p := index $v.probes $probe }}
      {{- if $p.enabled }}
      {{ $kind }}:
        httpGet:
          path: {{ $p.path }}
          port: admin
        initialDelaySeconds: {{ $p.initialDelaySeconds }}
        periodSeconds: {{ $p.periodSeconds }}
        timeoutSeconds: {{ $p.timeoutSeconds }}
        failureThreshold: {{ $p.failureThreshold }}
      {{- end }}
      {{- end }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: pipeline
          mountPath: /etc/plume/pipeline.yaml
          subPath: pipeline.yaml
          readOnly: true
        - name: state
          mountPath: {{ include "plume.stateDirRoot" $root }}
        - name: tmp
          mountPath: /tmp
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: pipeline
      configMap:
        name: {{ include "plume.fullname" $root }}
        items:
          - key: pipeline.yaml
            path: pipeline.yaml
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmpSizeLimit }}
    {{- with .stateVolume }}
    - name: state
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    - {{ toYaml . | nindent 6 | trim }}
      {{- if not .labelSelector }}
      labelSelector:
        matchLabels:
          {{- include "plume.selectorLabels" $root | nindent 10 }}
          app.kubernetes.io/component: {{ $.component }}
      {{- end }}
    {{- end }}
  {{- end }}
{{- end }}
