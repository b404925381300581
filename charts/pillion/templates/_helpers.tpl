{{/* Names and labels shared by every template. */}}

{{- define "pillion.labels" -}}
app.kubernetes.io/part-of: pillion
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pillion.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry (index . 1) (default (printf "v%s" $root.Chart.AppVersion) $root.Values.image.tag) -}}
{{- end -}}

{{- define "pillion.controlPlaneAddr" -}}
{{- printf "pillion-control-plane.%s.svc.cluster.local:8086" .Release.Namespace -}}
{{- end -}}

{{- define "pillion.controlPlaneIdentity" -}}
{{- printf "spiffe://%s/ns/%s/sa/pillion-control-plane" .Values.trustDomain .Release.Namespace -}}
{{- end -}}

{{/* The restricted pod security every Pillion workload runs with. */}}
{{- define "pillion.podSecurity" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pillion.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
{{- end -}}
