// Writes ../../tests/fixtures/token_counts.json: each sample below with its real token counts in the
// cl100k_base and o200k_base encodings, as bundled by the npm package gpt-tokenizer (no network at
// run time). Rerun: cd tools/token_fixture && npm install && node make_fixture.mjs
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as cl100k from "gpt-tokenizer/encoding/cl100k_base";
import * as o200k from "gpt-tokenizer/encoding/o200k_base";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "tests", "fixtures", "token_counts.json");
const tokenizerVersion = JSON.parse(
  readFileSync(join(here, "node_modules", "gpt-tokenizer", "package.json"), "utf8")).version;

// [kind, length, text]; written for this fixture, realistic text of each kind.
const SAMPLES = [
  // ---- English prose
  ["english", "short", "Please summarise the attached quarterly report in three bullet points for the board."],
  ["english", "short", "The batch finished at 03:12 UTC with 4,812 successful requests and 17 retries."],
  ["english", "short", "Can you recommend a good book about the history of the Roman Empire?"],
  ["english", "long", `When the first commercial railways opened in the 1830s, few people imagined how completely they would reshape the way ordinary people thought about time. Before the railway, every town kept its own local time, set by the sun at noon, and a traveller moving from Bristol to London simply adjusted his watch on arrival.

The timetable changed that. A train that left one station at a quarter past nine had to arrive at the next at a predictable hour, and passengers who missed it by a minute missed it altogether. Railway companies began to keep "railway time", synchronised by telegraph with the Royal Observatory at Greenwich, and within a generation most of Britain had quietly adopted it.

Historians still argue about whether the railway created the modern sense of punctuality or merely exposed a demand that already existed. What is clear is that, by the end of the century, being late had become a small moral failing rather than an accident of geography.`],
  ["english", "long", `Thank you for getting in touch about your recent order. I'm sorry to hear that the package arrived with a damaged corner and that one of the mugs inside was cracked.

We've arranged for a replacement to be sent out today by express delivery, at no extra cost to you. You should receive a tracking number by email within the next few hours. There's no need to return the broken item; please dispose of it safely.

If anything else about your order isn't right, just reply to this message and a member of our support team will be happy to help. We appreciate your patience, and we hope you enjoy the rest of the set.`],

  // ---- Chinese
  ["chinese", "short", "请把这份季度报告总结成三条要点，供董事会参考。"],
  ["chinese", "short", "今天下午三点在会议室讨论新产品的发布计划。"],
  ["chinese", "short", "这家餐厅的饺子很好吃，价格也不贵。"],
  ["chinese", "long", `随着人工智能技术的快速发展，越来越多的企业开始尝试将大型语言模型应用到日常业务中。从客户服务到文档撰写，从数据分析到代码生成，这些模型正在改变人们的工作方式。

然而，在实际部署过程中，企业也面临着不少挑战。首先是成本问题：大规模调用模型接口需要消耗大量的计算资源，费用往往超出预期。其次是数据安全：许多行业对客户信息的保护有严格的规定，企业必须确保敏感数据不会被泄露。

此外，模型输出的准确性也是一个需要持续关注的问题。专家建议，企业在引入新技术时应当循序渐进，先在小范围内进行试点，积累经验之后再逐步推广。只有这样，才能在控制风险的同时，真正发挥新技术的价值。`],
  ["chinese", "long", `我的家乡是南方的一个小城，城边有一条清澈的小河。小时候，每到夏天，我和小伙伴们就会跑到河边去捉鱼、游泳，一直玩到太阳落山才肯回家。

河的对岸是一大片稻田。秋天的时候，稻子熟了，金黄色的稻穗在风中轻轻摇动，远远望去就像一片金色的海洋。农民们弯着腰在田里收割，脸上带着丰收的笑容。

后来我去了北方上大学，毕业后又留在城市里工作，回家的次数越来越少。前几年回去的时候，发现小河边修起了公园，稻田也变成了新的住宅区。家乡变得更加现代了，可我心里总还是怀念那条小河和那片稻田。`],

  // ---- Japanese
  ["japanese", "short", "この資料を三つの要点にまとめて、明日の会議までに送ってください。"],
  ["japanese", "short", "東京駅から新幹線に乗って、京都へ向かいました。"],
  ["japanese", "short", "すみません、この近くにコンビニはありますか？"],
  ["japanese", "long", `日本の四季は、それぞれに異なる魅力を持っています。春には桜が咲き、多くの人々が公園に集まって花見を楽しみます。夏は暑く湿度も高いですが、各地で花火大会や夏祭りが開かれ、浴衣姿の人々で賑わいます。

秋になると、山々は赤や黄色に色づき、紅葉狩りに出かける観光客が増えます。また、新米や栗、さつまいもなど、食べ物がおいしい季節でもあります。冬は北の地方で雪が多く降り、スキーや温泉を楽しむことができます。

このように季節の移り変わりがはっきりしていることは、日本の文化や生活に大きな影響を与えてきました。俳句には必ず季語が使われ、和菓子や料理にも季節感が大切にされています。`],
  ["japanese", "long", `お問い合わせいただき、誠にありがとうございます。ご注文いただいた商品の配送が遅れており、大変ご迷惑をおかけしております。

現在、物流センターでの作業が混み合っているため、通常より二、三日ほどお時間をいただいております。商品は本日中に発送される予定で、発送が完了しましたら、追跡番号をメールにてお知らせいたします。

ご不明な点がございましたら、お気軽にカスタマーサポートまでご連絡ください。今後ともどうぞよろしくお願い申し上げます。`],

  // ---- Korean
  ["korean", "short", "이 보고서를 세 가지 요점으로 요약해 주세요."],
  ["korean", "short", "내일 아침 아홉 시에 회의실에서 만나요."],
  ["korean", "short", "주말에 친구들과 함께 부산으로 여행을 갈 예정입니다."],
  ["korean", "long", `한국의 전통 음식은 계절과 지역에 따라 매우 다양합니다. 그중에서도 김치는 가장 대표적인 음식으로, 배추나 무에 고춧가루, 마늘, 젓갈 등을 넣어 발효시켜 만듭니다. 예전에는 겨울이 오기 전에 온 가족과 이웃이 모여 함께 김장을 하는 풍습이 있었습니다.

비빔밥도 외국인들에게 널리 알려진 한국 음식입니다. 따뜻한 밥 위에 여러 가지 나물과 고기, 달걀을 올리고 고추장을 넣어 비벼 먹습니다. 재료의 색이 다채로워 보기에도 좋고 영양도 풍부합니다.

최근에는 한국 드라마와 음악의 인기와 함께 한국 음식에 대한 관심도 크게 늘어났습니다. 세계 여러 도시에서 한식당을 쉽게 찾아볼 수 있게 되었습니다.`],
  ["korean", "long", `고객님, 안녕하세요. 주문하신 상품과 관련하여 문의해 주셔서 감사합니다.

확인해 보니 배송 과정에서 상품이 일부 파손된 것으로 보입니다. 불편을 드려 정말 죄송합니다. 오늘 중으로 새 상품을 다시 보내 드리겠으며, 추가 비용은 전혀 발생하지 않습니다. 파손된 상품은 반품하지 않으셔도 됩니다.

다른 문의 사항이 있으시면 언제든지 고객센터로 연락해 주시기 바랍니다. 감사합니다.`],

  // ---- Russian
  ["russian", "short", "Пожалуйста, кратко изложите этот отчёт в трёх пунктах для совета директоров."],
  ["russian", "short", "Поезд из Москвы прибывает в Санкт-Петербург в половине восьмого."],
  ["russian", "short", "Не забудь купить хлеба и молока по дороге домой."],
  ["russian", "long", `Зима в этом году пришла рано. Уже в конце октября выпал первый снег, и к ноябрю улицы города покрылись толстым белым ковром. Дети радовались, лепили снеговиков и катались на санках с горки возле школы.

Взрослым же пришлось нелегко: машины застревали в сугробах, автобусы опаздывали, а коммунальные службы не успевали расчищать дороги. Многие жители жаловались на то, что тротуары по утрам превращались в каток.

Тем не менее к декабрю жизнь вошла в привычное русло. На главной площади поставили большую ёлку, открылась ярмарка с горячим чаем и пирогами, и город постепенно начал готовиться к Новому году.`],
  ["russian", "long", `Уважаемые коллеги!

Напоминаем, что в пятницу, 14 марта, в 15:00 состоится общее собрание отдела. На повестке дня: итоги первого квартала, планы на следующий период и обсуждение новой системы учёта рабочего времени.

Просим всех подготовить краткие отчёты о ходе текущих проектов и прислать их руководителю до четверга. Если вы не сможете присутствовать лично, сообщите об этом заранее, чтобы мы организовали для вас подключение по видеосвязи.

С уважением,
администрация`],

  // ---- Greek
  ["greek", "short", "Παρακαλώ στείλτε μου την αναφορά μέχρι την Παρασκευή."],
  ["greek", "short", "Η Αθήνα είναι μια από τις αρχαιότερες πόλεις του κόσμου."],
  ["greek", "long", `Το καλοκαίρι στα ελληνικά νησιά είναι μια εμπειρία που δύσκολα ξεχνιέται. Τα καταγάλανα νερά, τα λευκά σπίτια με τα μπλε παράθυρα και οι μικρές ταβέρνες δίπλα στη θάλασσα προσελκύουν κάθε χρόνο εκατομμύρια επισκέπτες από όλο τον κόσμο.

Πολλοί ταξιδιώτες επιλέγουν να επισκεφθούν περισσότερα από ένα νησιά, χρησιμοποιώντας τα πλοία που συνδέουν το Αιγαίο. Η Σαντορίνη και η Μύκονος είναι οι πιο γνωστοί προορισμοί, αλλά και τα μικρότερα νησιά, όπως η Φολέγανδρος και η Σίφνος, έχουν τη δική τους γοητεία.

Το βράδυ, οι κάτοικοι και οι επισκέπτες κάθονται στις πλατείες, τρώνε φρέσκο ψάρι και συζητούν μέχρι αργά.`],

  // ---- Arabic
  ["arabic", "short", "من فضلك أرسل لي التقرير قبل نهاية الأسبوع."],
  ["arabic", "short", "تقع مدينة القاهرة على ضفاف نهر النيل."],
  ["arabic", "long", `تعد القراءة من أهم العادات التي يمكن أن يكتسبها الإنسان في حياته، فهي تفتح أمامه أبواب المعرفة وتوسع آفاقه وتساعده على فهم العالم من حوله. وقد اهتمت الحضارات القديمة بالكتب والمكتبات، ومن أشهرها مكتبة الإسكندرية التي كانت تضم آلاف المخطوطات.

وفي عصرنا الحالي، أصبح الوصول إلى الكتب أسهل من أي وقت مضى بفضل التقنيات الحديثة، إذ يمكن للقارئ أن يحمل مكتبة كاملة في هاتفه المحمول. ومع ذلك، يشكو كثير من التربويين من تراجع عادة القراءة لدى الشباب.

لذلك ينصح الخبراء الآباء بتشجيع أطفالهم على القراءة منذ الصغر، وتخصيص وقت يومي للقراءة العائلية.`],

  // ---- French
  ["french", "short", "Pourriez-vous résumer ce rapport en trois points pour le conseil d'administration ?"],
  ["french", "short", "Le train à destination de Marseille partira à 18 h 45 du quai numéro trois."],
  ["french", "long", `L'été dernier, nous avons passé deux semaines en Bretagne, dans un petit village de pêcheurs près de Quimper. Chaque matin, nous allions au marché acheter du pain frais, des crêpes et des fruits de mer que les pêcheurs venaient de débarquer.

L'après-midi, nous nous promenions le long des falaises, où le vent soufflait si fort qu'il fallait parfois s'arrêter pour reprendre son souffle. Le paysage était magnifique : des landes couvertes de bruyère, des phares isolés et une mer d'un bleu profond.

Le soir, nous dînions dans une crêperie tenue par un couple très chaleureux, qui nous a fait goûter le cidre local. Ce séjour restera pour nous un souvenir inoubliable.`],

  // ---- German
  ["german", "short", "Bitte schicken Sie mir die überarbeitete Präsentation bis Donnerstagmittag."],
  ["german", "short", "Die Straßenbahn fährt heute wegen Bauarbeiten nur bis zum Hauptbahnhof."],
  ["german", "long", `Die Energiewende stellt Deutschland vor große Herausforderungen. Bis zum Jahr 2045 soll das Land klimaneutral werden, und dafür müssen nicht nur Kohlekraftwerke abgeschaltet, sondern auch Millionen von Gebäuden energetisch saniert werden.

Viele Hausbesitzer fragen sich, ob sich der Einbau einer Wärmepumpe für sie lohnt. Die Antwort hängt von zahlreichen Faktoren ab: vom Zustand der Dämmung, von der Größe des Grundstücks und nicht zuletzt von den verfügbaren Fördermitteln.

Fachleute empfehlen, sich vor einer Entscheidung ausführlich von einem unabhängigen Energieberater beraten zu lassen. Außerdem lohnt es sich, Angebote mehrerer Handwerksbetriebe zu vergleichen, da die Preise erheblich voneinander abweichen können.`],

  // ---- Python code
  ["python", "short", `def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0`],
  ["python", "short", `for path in sorted(Path("data").glob("*.csv")):
    print(path.name, path.stat().st_size)`],
  ["python", "long", `import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sale:
    region: str
    product: str
    amount: float


def load_sales(path: Path) -> list[Sale]:
    """Read a CSV of sales, one row per sale, skipping rows with a missing amount."""
    sales = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("amount"):
                continue
            sales.append(Sale(row["region"], row["product"], float(row["amount"])))
    return sales


def totals_by_region(sales: list[Sale]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for sale in sales:
        totals[sale.region] += sale.amount
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


if __name__ == "__main__":
    for region, total in totals_by_region(load_sales(Path("sales.csv"))).items():
        print(f"{region:<12} {total:>12,.2f}")
`],
  ["python", "long", `class RateLimiter:
    """A token bucket: \`rate\` tokens a second, at most \`burst\` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, n: int = 1) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= n:
                    self._tokens -= n
                    return
                await asyncio.sleep((n - self._tokens) / self.rate)
`],

  // ---- JSON
  ["json", "short", `{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}`],
  ["json", "short", `{"id": 18234, "status": "shipped", "items": 3, "total": 59.97, "currency": "EUR"}`],
  ["json", "long", `{
  "order_id": "A-2024-001873",
  "created_at": "2024-05-14T09:32:11Z",
  "customer": {
    "id": 55120,
    "name": "Jane Doe",
    "email": "jane.doe@example.com",
    "address": {"street": "12 High Street", "city": "Oxford", "postcode": "OX1 4AB", "country": "GB"}
  },
  "items": [
    {"sku": "MUG-BLU-01", "description": "Blue ceramic mug", "quantity": 2, "unit_price": 8.5},
    {"sku": "TEA-EG-250", "description": "Earl Grey, loose leaf, 250 g", "quantity": 1, "unit_price": 6.95},
    {"sku": "SPN-STL-04", "description": "Steel tea spoons, set of 4", "quantity": 1, "unit_price": 12.0}
  ],
  "shipping": {"method": "express", "cost": 4.99, "tracking": null},
  "paid": true,
  "notes": ""
}`],

  // ---- mixed English + Chinese
  ["mixed_en_zh", "short", "请用 Python 写一个函数 parse_date()，把 \"2024-05-14\" 转换成 datetime 对象。"],
  ["mixed_en_zh", "short", "这个 API 的 rate limit 是每分钟 500 requests，超过就会返回 429。"],
  ["mixed_en_zh", "long", `我们这周的 sprint 主要完成了三件事情。第一，把 user service 从 REST 迁移到了 gRPC，latency 平均降低了大约 30%。第二，修复了 login 页面在 Safari 上的 CSS bug，感谢 Alex 的 review。

第三，新的 CI pipeline 已经上线，现在每次 push 到 main branch 都会自动跑 unit tests 和 integration tests，失败的话会在 Slack 的 #dev-alerts 频道里通知。

下周的计划是开始做 payment 模块的 refactor，同时需要和产品经理确认 Q3 的 roadmap。如果大家有任何问题，可以在 Jira 上直接 comment。`],

  // ---- emoji-heavy
  ["emoji", "short", "Happy birthday!! 🎉🎂🥳 Hope your day is amazing 💖✨"],
  ["emoji", "short", "🔥🔥🔥 new drop tonight 👟👀 link in bio ⬇️⬇️"],
  ["emoji", "long", `Weekend recap 🌞🏖️

Saturday: beach day with the crew 🏄‍♀️🌊 then tacos 🌮🌮🌮 and way too many margaritas 🍹😅

Sunday: lazy morning ☕📚, farmers market 🍓🥕🥑, and a long walk with the dog 🐶🐾 who rolled in something gross 🤢😂

Monday is coming 😩⏰ but honestly no regrets 💯🙌 #weekendvibes ✌️❤️`],
  ["emoji", "short", "👍👍👍 😂😂😂 🙏🙏 ❤️❤️❤️ 👨‍👩‍👧‍👦 🇫🇷🇯🇵"],

  // ---- Hebrew
  ["hebrew", "short", "שלום, מה שלומך היום? אני רוצה להזמין שולחן לשניים בערב."],
  ["hebrew", "long", `ירושלים היא אחת הערים העתיקות בעולם, ויש בה מקומות קדושים לשלוש דתות. בכל שנה מגיעים אליה מיליוני תיירים ועולי רגל מכל קצוות תבל.

העיר העתיקה מחולקת לארבעה רובעים, ובכל אחד מהם אווירה מיוחדת משלו. בסמטאות הצרות אפשר למצוא שווקים צבעוניים, מסעדות קטנות וחנויות של מזכרות.

מחוץ לחומות התפתחה עיר מודרנית עם מוזיאונים, אוניברסיטאות ושכונות מגורים חדשות.`],

  // ---- Ukrainian (Cyrillic, but not Russian)
  ["ukrainian", "short", "Будь ласка, надішліть мені звіт до кінця тижня."],
  ["ukrainian", "long", `Київ — одне з найдавніших міст Східної Європи. Його історія налічує понад півтори тисячі років, а золоті бані Києво-Печерської лаври видно здалеку з берегів Дніпра.

Навесні місто потопає в зелені: цвітуть каштани, у парках гуляють родини з дітьми, а на Хрещатику у вихідні вулицю перекривають для пішоходів.

Туристам варто відвідати Андріївський узвіз, Софійський собор і Золоті ворота, а також скуштувати справжній український борщ із пампушками.`],

  // ---- other Latin-script languages with their own letters
  ["polish", "short", "Proszę przesłać mi poprawioną wersję umowy do piątku, żebyśmy zdążyli ją podpisać."],
  ["vietnamese", "short", "Xin vui lòng gửi cho tôi bản báo cáo trước thứ Sáu để chúng ta kịp họp."],
  ["polish", "long", `W zeszłym tygodniu odwiedziliśmy Kraków. Spacerowaliśmy po Rynku Głównym, zwiedziliśmy Wawel i zjedliśmy pierogi w małej restauracji na Kazimierzu.

Pogoda była piękna, choć wieczorem zrobiło się dość chłodno. Następnego dnia pojechaliśmy do Wieliczki, żeby zobaczyć słynną kopalnię soli, która zrobiła na nas ogromne wrażenie.`],
  ["vietnamese", "long", `Hà Nội là thủ đô của Việt Nam, nổi tiếng với những con phố cổ, hồ Hoàn Kiếm và nền ẩm thực phong phú. Mỗi buổi sáng, người dân thường ngồi ở quán vỉa hè để ăn phở và uống cà phê.

Vào mùa thu, thời tiết trở nên mát mẻ, lá vàng rơi trên những con đường rợp bóng cây. Đây là thời điểm lý tưởng để du khách khám phá thành phố bằng xe đạp hoặc đi bộ.`],

  // ---- beyond the brief's list: scripts whose tokenisation differs most between encodings
  ["hindi", "short", "कृपया इस रिपोर्ट का सारांश तीन बिंदुओं में लिखें।"],
  ["hindi", "long", `भारत विविधताओं का देश है। यहाँ अनेक भाषाएँ बोली जाती हैं, अलग-अलग धर्मों के लोग रहते हैं और हर राज्य की अपनी संस्कृति, खान-पान और त्योहार हैं।

दीवाली, होली और ईद जैसे त्योहार पूरे देश में बड़े उत्साह से मनाए जाते हैं। इन अवसरों पर लोग अपने घरों को सजाते हैं, मिठाइयाँ बाँटते हैं और परिवार के साथ समय बिताते हैं।`],
  ["thai", "short", "กรุณาสรุปรายงานนี้เป็นสามข้อสำหรับการประชุมพรุ่งนี้"],
  ["thai", "long", `กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย และเป็นศูนย์กลางทางเศรษฐกิจ การศึกษา และวัฒนธรรม นักท่องเที่ยวจากทั่วโลกเดินทางมาเพื่อชมวัดวาอาราม ตลาดน้ำ และลิ้มลองอาหารริมทาง

ในช่วงเทศกาลสงกรานต์ ผู้คนจะออกมาเล่นน้ำตามท้องถนนเพื่อต้อนรับปีใหม่ไทย และไปทำบุญที่วัดกับครอบครัว`],
];

const samples = SAMPLES.map(([kind, length, text], i) => ({
  id: `${kind}-${length}-${i}`,
  kind,
  length,
  chars: [...text].length,
  cl100k_base: cl100k.countTokens(text),
  o200k_base: o200k.countTokens(text),
  text,
}));

const fixture = {
  generator: "tools/token_fixture/make_fixture.mjs",
  tokenizer: `gpt-tokenizer ${tokenizerVersion} (npm), encodings cl100k_base and o200k_base`,
  note: "chars counts code points (Python len); counts are of the text alone, no chat framing",
  samples,
};

mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(fixture, null, 1) + "\n");
console.log(`wrote ${samples.length} samples to ${out}`);
