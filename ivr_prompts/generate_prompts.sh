#!/usr/bin/env bash
# Regenerate the default IVR prompts of hospital.yaml with espeak-ng + sox:
# 8 kHz, 16-bit, mono WAV, leading/trailing silence trimmed, peak-normalised to -3 dBFS.
#   Japanese: espeak-ng -v ja, fed kana (espeak-ng reads no kanji)
#   Mandarin: espeak-ng -v cmn-latn-pinyin, fed pinyin with tone numbers
#   English:  espeak-ng -v en
# Needs: apt-get install -y espeak-ng sox.   Usage: ivr_prompts/generate_prompts.sh [OUTPUT_DIR]
# These synthetic voices are placeholders: record real ones (see README.md) and keep the file names.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null || { echo "generate_prompts.sh: $tool not found (apt-get install -y espeak-ng sox)" >&2; exit 2; }
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

declare -A VOICE=([ja]=ja [en]=en [zh]=cmn-latn-pinyin)

# speak LANG FILE TEXT: one trimmed 8 kHz prompt (FILE without .wav, relative to $out unless absolute)
speak() {
  local lang="$1" file="$2" text="$3" dest
  if [[ "$file" == /* ]]; then dest="$file.wav"; else dest="$out/$file.wav"; fi
  mkdir -p "$(dirname "$dest")"
  espeak-ng -v "${VOICE[$lang]}" -s 180 -w "$tmp/raw.wav" -- "$text"
  sox -q "$tmp/raw.wav" -r 8000 -b 16 -c 1 "$dest" \
    silence 1 0.01 -50d reverse silence 1 0.01 -50d reverse norm -3
}

# Phrases: name | ja (kana) | en | zh (pinyin)
while IFS='|' read -r name ja en zh; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  speak ja "ja/$name" "$ja"
  speak en "en/$name" "$en"
  speak zh "zh/$name" "$zh"
done <<'PHRASES'
welcome|おでんわ ありがとうございます。みなと びょういん です。|Thank you for calling Minato Hospital.|xie4 xie4 nin2 de5 lai2 dian4. zhe4 li3 shi4 gang3 kou3 yi1 yuan4.
main_menu|よやくは いち、うけつけは に、ごあんないは さん、アンケートは よん、おりかえしは きゅう。|Appointments, 1. Reception, 2. Information, 3. Survey, 4. Call back, 9.|yu4 yue1 qing3 an4 yi1, qian2 tai2 an4 er4, zi1 xun2 an4 san1, diao4 cha2 an4 si4, hui2 dian4 an4 jiu3.
main_menu_short|ばんごうを おしてください。|Please press a number.|qing3 an4 shu4 zi4 jian4.
invalid|ばんごうが ちがいます。|That is not a valid choice.|shu1 ru4 wu2 xiao4.
no_input|にゅうりょくが ありません。|We did not receive your input.|mei2 you3 shou1 dao4 shu1 ru4.
info_menu|こうつうは いち、めんかいじかんは に。もどるは こめじるし。|Directions, 1. Visiting hours, 2. Star to go back.|jiao1 tong1 an4 yi1, tan4 shi4 shi2 jian1 an4 er4, fan3 hui2 an4 xing1 hao4.
access|みなとえきから とほ ごふんです。|We are a five minute walk from Minato station.|cong2 gang3 kou3 zhan4 bu4 xing2 wu3 fen1 zhong1.
visiting_hours|めんかいは ごご にじから しちじまでです。|Visiting hours are 2 to 7 p.m.|tan4 shi4 shi2 jian1 xia4 wu3 liang3 dian3 dao4 qi1 dian3.
enter_patient_number|しんさつけん ばんごうと シャープを おしてください。|Enter your patient number, then hash.|qing3 shu1 ru4 jiu4 zhen3 ka3 hao4, yi3 jing3 hao4 jie2 shu4.
enter_birth_date|せいねんがっぴを はちけたで どうぞ。|Enter your date of birth, eight digits.|qing3 shu1 ru4 ba1 wei4 chu1 sheng1 ri4 qi1.
your_patient_number_is|しんさつけん ばんごうは|Your patient number is|nin2 de5 jiu4 zhen3 ka3 hao4 shi4
patient_not_found|かんじゃさまが みつかりません。|We could not find your record.|wei4 zhao3 dao4 nin2 de5 ji4 lu4.
system_busy|うけつけに おつなぎします。|Connecting you to reception.|zheng4 zai4 wei4 nin2 zhuan3 jie1 qian2 tai2.
closed|うけつけは しゅうりょうしました。るすでんは いち、じかんは に。|We are closed. Message, 1. Opening hours, 2.|xian4 zai4 yi3 xia4 ban1. liu2 yan2 an4 yi1, ying2 ye4 shi2 jian1 an4 er4.
hours|へいじつ はちじはんから ごじまでです。|Open weekdays, 8 30 to 5.|gong1 zuo4 ri4 ba1 dian3 ban4 dao4 wu3 dian3.
holiday|ほんじつは きゅうしんびです。|Today is a holiday.|jin1 tian1 xiu1 zhen3.
voicemail|はっしんおんの あとに どうぞ。|Please speak after the tone.|qing3 zai4 di1 sheng1 hou4 liu2 yan2.
voicemail_thanks|うけたまわりました。|Thank you, your message is recorded.|liu2 yan2 yi3 shou1 dao4, xie4 xie4.
survey_intro|アンケートに ごきょうりょく ください。|Please answer our short survey.|qing3 can1 yu4 wen4 juan4 diao4 cha2.
survey_q1|ごまんぞく いただけましたか。はいは いち、いいえは に。|Were you satisfied? Yes, 1. No, 2.|nin2 man3 yi4 ma5? shi4 an4 yi1, fou3 an4 er4.
survey_q2|いちから ごで ひょうかして ください。|Rate us from 1 to 5.|qing3 cong2 yi1 dao4 wu3 ping2 fen1.
goodbye|おでんわ ありがとうございました。|Thank you for calling. Goodbye.|xie4 xie4 lai2 dian4, zai4 jian4.
sorry_goodbye|もうしわけありません。おかけなおし ください。|Sorry. Please call again later.|bao4 qian4, qing3 shao1 hou4 zai4 bo1.
lecture_handwashing|てあらいは せっけんで さんじゅうびょう いじょう。|Wash your hands with soap for thirty seconds.|xi3 shou3 qing3 yong4 fei2 zao4 san1 shi2 miao3.
lecture_salt|しおは いちにち ろくグラム みまんに。|Keep salt under six grams a day.|mei3 tian1 shi2 yan2 bu2 yao4 chao1 guo4 liu4 ke4.
position_before|あなたの じゅんばんは|You are number|nin2 pai2 zai4 di4
position_after|ばんめです。|in line.|wei4.
wait_before|おまちじかんは およそ|The wait is about|yu4 ji4 deng3 dai4
wait_after|ふんです。|minutes.|fen1 zhong1.
PHRASES

# Say fragments (gateway/ivr/model.py _SAY_FRAGMENTS): name | text, per language.
fragments() {
  local lang="$1"
  while IFS='|' read -r name text; do
    [[ -z "$name" ]] && continue
    speak "$lang" "say/$lang/$name" "$text"
  done
}
fragments ja <<'JA'
0|ぜろ
1|いち
2|に
3|さん
4|よん
5|ご
6|ろく
7|なな
8|はち
9|きゅう
10|じゅう
100|ひゃく
1000|せん
10000|まん
100000000|おく
300|さんびゃく
600|ろっぴゃく
800|はっぴゃく
3000|さんぜん
8000|はっせん
JA
fragments zh <<'ZH'
0|ling2
1|yi1
2|er4
3|san1
4|si4
5|wu3
6|liu4
7|qi1
8|ba1
9|jiu3
10|shi2
100|bai3
1000|qian1
10000|wan4
100000000|yi4
ZH
words=(zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
       seventeen eighteen nineteen)
tens=([20]=twenty [30]=thirty [40]=forty [50]=fifty [60]=sixty [70]=seventy [80]=eighty [90]=ninety)
{
  for n in "${!words[@]}"; do echo "$n|${words[$n]}"; done
  for n in "${!tens[@]}"; do echo "$n|${tens[$n]}"; done
  printf '100|hundred\n1000|thousand\n1000000|million\n'
} | fragments en

# Language-neutral: the record beep (1 kHz, 0.4 s) and the language choice in all three voices.
mkdir -p "$out/common"
sox -q -n -r 8000 -b 16 -c 1 "$out/common/beep.wav" synth 0.4 sine 1000 gain -6 fade 0.01 0.4 0.01
speak ja "$tmp/sel_ja" "にほんごは いち。"
speak en "$tmp/sel_en" "For English, press 2."
speak zh "$tmp/sel_zh" "zhong1 wen2 qing3 an4 san1."
sox -q -n -r 8000 -b 16 -c 1 "$tmp/gap.wav" trim 0 0.3
sox -q "$tmp/sel_ja.wav" "$tmp/gap.wav" "$tmp/sel_en.wav" "$tmp/gap.wav" "$tmp/sel_zh.wav" \
  "$out/common/language_select.wav"
echo "generate_prompts.sh: prompts written under $out"
