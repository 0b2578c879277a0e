{{- define "ash.labels" -}}
app.kubernetes.io/name: ash
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "ash.natsEnv" -}}
- name: ASH_NATS_URL
  value: {{ .Values.nats.url | quote }}
{{- if .Values.nats.caSecret }}
- name: ASH_NATS_TLS_CA
  value: /etc/ash/nats-ca/ca.pem
{{- end }}
{{- end -}}
